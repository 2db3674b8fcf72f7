"""YAML as every file of the project is read: PyYAML's safe loader, where a repeated key in a
mapping is an error instead of silently the last one (``epochs: 2`` ... ``epochs: 3``), and a
number in exponent form without a dot (``2e-05``, as JSON and Python write it, so a run's own
config.json loads back) is a float as in YAML 1.2, not PyYAML's YAML 1.1 string."""

from __future__ import annotations

import re
from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names a key twice; ``key`` and both 1-based ``lines`` say where."""

    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"{key}: duplicate key (lines {first} and {again})")
        self.key, self.lines = key, (first, again)


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides are YAML's own
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # the constructor reports unhashable keys itself
        line = key_node.start_mark.line + 1
        if key in seen:
            raise DuplicateKeyError(key, seen[key], line)
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
# YAML 1.2's exponent floats that YAML 1.1's pattern misses (it wants a dot: 2.0e-05).
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` on a repeated key."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def first_line(e: yaml.YAMLError) -> str:
    """A YAML error in one line, for a one-line message."""
    return str(e).splitlines()[0]
