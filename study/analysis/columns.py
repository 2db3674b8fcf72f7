"""The results table's column names: the one place they are spelled.

Modules ask for a column (``cfg("batch_size")``, ``knob("depth")``, ``axis("agc")``) and never
build or parse a name themselves.
"""

from __future__ import annotations


def cfg(key: str) -> str:
    """The column of config key ``key``."""
    return f"cfg.{key}"


def knob(name: str) -> str:
    """The column of model knob ``name`` (``model.<name>`` in a grid file)."""
    return f"cfg.model.{name}"


def axis(name: str) -> str:
    """The column of grid axis ``name`` (the key's value that tells a run apart in its block)."""
    return f"axis.{name}"
