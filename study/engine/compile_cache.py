"""JAX's persistent compilation cache, shared by every run on this machine.

The runs of a grid share their shapes (an axis such as ``agc`` or ``seed`` changes no shape), so
each would otherwise pay the same XLA compile (8–16 s for the local models on 2 cores) before its
first step. With the cache, the first run of a shape compiles and stores the executable, and the
others load it. The cache is JAX's own (keyed by the computation, the compile options and flags,
and the jax/jaxlib versions), so a stale entry is never used. ``STUDY_JAX_CACHE`` sets the
directory (default ``$XDG_CACHE_HOME/study/jax``); ``STUDY_JAX_CACHE=off`` turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path


def directory() -> Path | None:
    """Where the cache lives, or None when turned off."""
    value = os.environ.get("STUDY_JAX_CACHE")
    if value == "off":
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "study" / "jax"


def enable() -> str | None:
    """Points JAX at the cache (before the first compile); returns the directory used."""
    import jax

    path = directory()
    if path is None:
        return None
    if jax.config.jax_compilation_cache_dir:  # set by the caller (the test suite, a benchmark)
        return str(jax.config.jax_compilation_cache_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home only costs the compile
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every train and eval step is worth keeping: even a 1 s compile is paid once per run.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(path)
