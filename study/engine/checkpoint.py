"""Orbax checkpoints of a run: train state, grain iterator state and step metadata.

Typed PRNG keys (the dropout streams) are stored as their raw key data and re-wrapped on
restore. Saves are synchronous so a SIGKILL right after ``save`` returns loses nothing, and
orbax's tmp-dir-then-rename makes a killed save invisible. Restore walks back from the newest
step, so a corrupt newest checkpoint falls back to the one before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_storable(state: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def from_storable(stored: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda s, l: jax.random.wrap_key_data(s, impl=jax.random.key_impl(l)) if _is_key(l) else s,
        stored, like,
    )


class Checkpointer:
    def __init__(self, directory: Path, keep: int):
        self.mngr = ocp.CheckpointManager(
            directory.absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, cleanup_tmp_directories=True,
                create=True,
            ),
        )

    def save(self, step: int, state: Any, data_iter: Any, meta: dict) -> None:
        if step in self.mngr.all_steps():
            return
        self.mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(to_storable(state)),
            data=grain.checkpoint.CheckpointSave(data_iter),
            meta=ocp.args.JsonSave(meta),
        ), force=True)
        self.mngr.wait_until_finished()

    def restore(self, like: Any, data_iter: Any) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest readable checkpoint, or None if there is none."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_storable(like))
        for step in sorted(self.mngr.all_steps(), reverse=True):
            try:
                out = self.mngr.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    data=grain.checkpoint.CheckpointRestore(data_iter),
                    meta=ocp.args.JsonRestore(),
                ))
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: try the previous
                log.warning("checkpoint %d unreadable (%s); trying the previous one", step, e)
                continue
            return step, from_storable(out["state"], like), dict(out["meta"])
        return None

    def close(self) -> None:
        self.mngr.close()

