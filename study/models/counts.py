"""Parameters and MACs of a registered model: the one place they are counted.

``structure(name, resolution, **overrides)`` builds the model abstractly (``nnx.eval_shape``: no
memory) and counts its trainable parameters and its multiply-accumulates per image at
``resolution`` (the model's test resolution by default), as the paper counts them. Building
NFNet F0–F7 takes minutes on a small CPU, so counts are cached on disk, keyed by the source of
``study/models``: any change to a model file invalidates them. The CLI (``study models
--count``), the results table and the comparison with Table 3 all read it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Structure:
    params: int
    macs: float
    resolution: int


@functools.lru_cache(maxsize=1)
def _digest() -> str:
    src = Path(__file__).parent
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(src.glob("*.py")))).hexdigest()[:12]


def cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "study"
    return root / f"structure-{_digest()}.json"


def _key(name: str, resolution: int, overrides: dict[str, Any]) -> str:
    return json.dumps([name, resolution, sorted(overrides.items())], default=str)


_memory: dict[str, Structure] = {}


def cached(name: str, resolution: int, **overrides: Any) -> Structure | None:
    """The counts if already on disk (or in memory), else None: never builds a model, so a
    process that must not start JAX (the launcher forks trainers) can ask."""
    key = _key(name, resolution, overrides)
    if key in _memory:
        return _memory[key]
    try:
        entry = json.loads(cache_path().read_text()).get(key)
    except (OSError, ValueError):
        return None
    return Structure(**entry) if entry else None


def structure(name: str, resolution: int | None = None, **overrides: Any) -> Structure:
    """Params and MACs of model ``name`` with ``overrides`` at ``resolution`` (default: test)."""
    from study import models

    if name not in models.PRESETS:
        raise ValueError(f"model: unknown {name!r}; valid: {', '.join(models.names())}")
    res = resolution or models.PRESETS[name].test_resolution
    key = _key(name, res, overrides)
    if key in _memory:
        return _memory[key]
    path = cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        from flax import nnx

        abstract = nnx.eval_shape(lambda: models.create(name, rngs=nnx.Rngs(0), **overrides))
        cache[key] = dict(params=models.count_params(abstract), macs=models.flops(name, res, **overrides),
                          resolution=res)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, path)  # concurrent writers: the last whole file wins
        except OSError:
            pass  # a read-only home only costs the recomputation
    _memory[key] = Structure(**cache[key])
    return _memory[key]
