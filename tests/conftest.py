import os

import jax

import study  # noqa: F401  (sets the project's XLA:CPU flags before any backend starts)

# XLA compiles dominate this suite on 2 CPU cores; a persistent cache makes reruns fast.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("STUDY_JAX_CACHE", os.path.expanduser("~/.cache/study/jax-tests")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
