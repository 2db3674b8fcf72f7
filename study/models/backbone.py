"""What every network of the zoo shares: a stem, then stages of residual blocks.

NFNets, NF-ResNets and the BN-ResNets differ in their stem, blocks and head; walking the blocks
(for signal propagation, :mod:`study.models.signal_prop`) is the same for all of them.
"""

from __future__ import annotations

import jax
from flax import nnx


class Backbone(nnx.Module):
    """A subclass sets ``self.stages`` (lists of blocks) and defines :meth:`stem_forward`."""

    def stem_forward(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def blocks(self) -> list[nnx.Module]:
        return [b for stage in self.stages for b in stage]

    def features(self, x: jax.Array, collect: list | None = None) -> jax.Array:
        """Stem and blocks; appends each block's output to ``collect`` when given."""
        x = self.stem_forward(x)
        for block in self.blocks():
            x = block(x)
            if collect is not None:
                collect.append(x)
        return x
