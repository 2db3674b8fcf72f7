"""Traced steps kept on disk with ``jax.export``, so a grid's later runs skip Python tracing.

JAX's persistent compilation cache (:mod:`study.engine.compile_cache`) removes the XLA compile
of a step every run of a grid shares, but not the tracing before it: on the local models that
is 5 s of Python per run (``JAX_LOG_COMPILES``: 3.3 s for the gradient step, 2.0 s for the
optimizer step), most of a cached run's first step. Here the first run of a step exports it
(StableHLO, serialized) and every later run with the same key deserializes and calls it: one
``call_exported`` to trace, then the compile cache's hit.

The key covers what the trace depends on: the caller's ``key`` (the run config without its
seed, and what the data sets in the trace), the argument structure, shapes and dtypes, the
source of the ``study`` package, the jax, flax and optax versions and the JAX settings that
change a trace. A seed changes only argument values, never the trace. PRNG key
arrays travel as their raw uint32 data, as exported functions take plain arrays. Single device
only; ``STUDY_JAX_CACHE=off`` turns it off with the compile cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import jax

from study.engine import compile_cache

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# JAX settings that change a trace (promotion, precision, PRNG lowering), not only its compile.
TRACE_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
               "jax_numpy_dtype_promotion", "jax_threefry_partitionable", "jax_default_prng_impl")


def _versions() -> dict[str, Any]:
    return {**{m: importlib.metadata.version(m) for m in ("jax", "jaxlib", "flax", "optax")},
            **{f: str(getattr(jax.config, f, None)) for f in TRACE_FLAGS}}


def directory() -> Path | None:
    """Where exported steps live (beside the compile cache: ``<cache>-exported``), or None when
    caching is off."""
    root = compile_cache.directory()
    return None if root is None else root.with_name(root.name + "-exported")


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_plain(leaves: list) -> tuple[list, list]:
    """Leaves with PRNG keys replaced by their uint32 data, and each key's impl (None: not a key)."""
    impls = [jax.random.key_impl(x) if _is_key(x) else None for x in leaves]
    return [jax.random.key_data(x) if i is not None else x for x, i in zip(leaves, impls)], impls


def _from_plain(leaves: list, impls: list) -> list:
    return [x if i is None else jax.random.wrap_key_data(x, impl=i) for x, i in zip(leaves, impls)]


def cached_jit(fn: Callable, name: str, key: str, *, donate: int | None = None) -> Callable:
    """``jax.jit(fn)`` whose trace is exported on first use and reused across processes.

    ``donate``: the positional argument whose buffers are donated (as ``donate_argnums``).
    Arguments are pytrees of arrays (or None); Python scalars are traced as arrays.
    """
    where = directory()
    plain = jax.jit(fn, donate_argnums=() if donate is None else (donate,))
    if where is None or jax.device_count() != 1:
        return plain
    compiled: dict[Any, Callable] = {}

    def call(*args: Any) -> Any:
        leaves, in_tree = jax.tree.flatten(args)
        # The signature from attributes alone: this runs every step, for every leaf of the
        # train state (hundreds), so nothing here may cost more than an attribute read.
        sig = (in_tree, tuple((getattr(x, "shape", None), getattr(x, "dtype", type(x))) for x in leaves))
        entry = compiled.get(sig)
        if entry is None:
            flat, in_impls = _to_plain(leaves)
            avals = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in map(jax.numpy.asarray, flat))
            run = _load_or_export(fn, name, key, args, in_tree, in_impls, avals, where, donate)
            entry = compiled[sig] = (run, [i for i, impl in enumerate(in_impls) if impl is not None])
        run, key_at = entry
        if key_at:
            leaves = list(leaves)
            for i in key_at:
                leaves[i] = jax.random.key_data(leaves[i])
        out_flat, out_tree, out_impls = run(leaves)
        if any(i is not None for i in out_impls):
            out_flat = _from_plain(out_flat, out_impls)
        return jax.tree.unflatten(out_tree, out_flat)

    return call


def _load_or_export(fn: Callable, name: str, key: str, args: tuple, in_tree: Any, in_impls: list,
                    avals: tuple, where: Path, donate: int | None) -> Callable:
    ident = json.dumps({"name": name, "key": key, "tree": str(in_tree), "impls": [str(i) for i in in_impls],
                        "avals": [str(a) for a in avals], "source": _source_digest(),
                        "versions": _versions(), "backend": jax.default_backend()}, sort_keys=True)
    path = where / f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.bin"
    exported = out_tree = out_impls = None
    if path.exists():
        try:
            blob = pickle.loads(path.read_bytes())
            if blob["ident"] == ident:
                exported = jax.export.deserialize(blob["exported"])
                out_tree, out_impls = blob["out_tree"], blob["out_impls"]
                log.info("reusing the traced %s (%s)", name, path.name)
        except Exception as e:  # a torn or foreign file costs only the trace
            log.warning("ignoring %s: %s", path, e)
    if exported is None:
        box: dict[str, Any] = {}

        def flat_fn(*flat: Any) -> list:
            out = fn(*jax.tree.unflatten(in_tree, _from_plain(list(flat), in_impls)))
            leaves, box["tree"] = jax.tree.flatten(out)
            plain, box["impls"] = _to_plain(leaves)
            return plain

        exported = jax.export.export(jax.jit(flat_fn))(*avals)
        out_tree, out_impls = box["tree"], box["impls"]
        try:
            where.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps({"ident": ident, "exported": exported.serialize(),
                                          "out_tree": out_tree, "out_impls": out_impls}))
            tmp.replace(path)  # atomic: a concurrent run reads a whole file or none
            log.info("traced %s, kept as %s", name, path.name)
        except OSError as e:
            log.warning("not caching %s: %s", name, e)
    if donate is None:
        n_donated = 0
        first = 0
    else:
        first = len(jax.tree.leaves(args[:donate]))
        n_donated = len(jax.tree.leaves(args[donate]))
    run = jax.jit(exported.call, donate_argnums=tuple(range(first, first + n_donated)))
    return lambda flat: (run(*flat), out_tree, out_impls)
