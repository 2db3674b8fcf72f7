"""Ablation grid files: a base config, blocks of axes, seeds and per-scale overrides.

A grid file (``ablations/<name>.yaml``) opens with comments giving its launch command and the
outcome the paper reports, then::

    name: agc
    base: {model: nf-resnet-nano, ...}       # config keys shared by every run
    blocks:                                  # each block: fixed keys × cartesian axes × zips
      - axes: {agc: [true, false], batch_size: [256, 512]}
      - set: {model: resnet-nano, agc: false}
        axes: {batch_size: [256, 512]}
        zip: [{base_lr: [0.1, 0.2], warmup_epochs: [1, 2]}]   # zipped keys move together
    seeds: [0, 1, 2, 3, 4]                   # a block may set its own ``seeds:``
    aggregate: {best: 4}                     # report the mean of the best 4 of 5 seeds
    budget: epochs                           # epochs (the paper's) | steps (see BUDGETS)
    scales:                                  # smoke | local | paper overrides
      smoke: {base: {...}, seeds: [0], aggregate: {}, axes: {batch_size: [32, 64]}}
      local: {mem_gb: 16}                    # one run's peak memory: the local launcher starts a
                                             # run only while the declared memory of the runs
                                             # in flight fits the machine's
    report:                                  # what the grid feeds in ``study report``
      order: 2                               # its place in the report (then by name)
      section: "Figure 2: adaptive gradient clipping"
      figure: {draw: figure2a, title: Figure 2a, caption: "..."}   # + the drawer's arguments
      claims: [agc_stable_at_largest_batch, ...]                    # study.analysis.claims ids

Every run's config is resolved and validated (``study.config``) before anything is launched;
its identity is the hash of the resolved config, and its directory
``<runs>/<grid>/<scale>/<hash>/``. Errors name the file and the key in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

from study import config as config_lib
from study import yamlfile
from study.record import RunRecord

SCALES = ("smoke", "local", "paper")
TOP_KEYS = {"name", "description", "base", "blocks", "seeds", "aggregate", "scales", "report", "budget"}
BLOCK_KEYS = {"set", "axes", "zip", "label", "seeds", "mem_gb"}
SCALE_KEYS = {"base", "seeds", "axes", "blocks", "budget", "aggregate", "mem_gb"}
# How long each batch size trains. ``epochs``: the paper's protocol, the same epochs (so a
# larger batch takes fewer optimizer steps). ``steps``: every run takes the optimizer steps
# (and warmup steps) that the grid's smallest batch takes in its epochs, so a large batch that
# still fails is unstable, not short of steps.
BUDGETS = ("epochs", "steps")
REPORT_KEYS = {"order", "section", "figure", "claims"}
FIGURE_KEYS = {"draw", "title", "caption"}  # any other key is an argument of the drawer
# A grid this large is almost always a typo (200,000 seeds); `--max-runs` raises the limit.
MAX_RUNS = 10_000


class GridError(ValueError):
    """A malformed grid file; the message names the file and key."""


@dataclasses.dataclass(frozen=True)
class Run:
    grid: str
    scale: str
    config: dict[str, Any]  # fully resolved
    label: str  # the block's label, e.g. "nf" or "bn-reference"
    varied: dict[str, Any]  # the block's fixed keys and axis values that distinguish this run
    # Peak memory of the run, GiB, where its block or scale declares it (not part of its identity:
    # what it costs to run, not what it computes).
    mem_gb: float | None = None

    @property
    def run_id(self) -> str:
        return config_hash(self.config)

    def directory(self, root: str | Path) -> Path:
        return Path(root) / self.grid / self.scale / self.run_id

    def record(self, root: str | Path) -> RunRecord:
        return RunRecord(self.directory(root))


@dataclasses.dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    scale: str
    runs: list[Run]
    aggregate: dict[str, Any]
    header: str
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    mem_gb: float | None = None  # peak memory of one run at this scale, when the file states it

    @property
    def axes(self) -> list[str]:
        """The keys that tell runs apart, in the grid file's order."""
        return list(dict.fromkeys(k for r in self.runs for k in r.varied))


def config_hash(cfg: dict[str, Any]) -> str:
    canonical = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _axes(value: Any, where: str) -> dict[str, list]:
    axes = _mapping(value, where)
    for key, values in axes.items():
        if not isinstance(values, list):
            raise GridError(f"{where}.{key}: expected a list of values, got {values!r}")
        if not values:
            raise GridError(f"{where}.{key}: empty axis")
    return axes


def _report(value: Any, where: str) -> dict[str, Any]:
    """The ``report:`` block's shape (the names in it are checked by the report, which owns them)."""
    report = _mapping(value, where)
    bad = set(report) - REPORT_KEYS
    if bad:
        raise GridError(f"{where}.{sorted(bad)[0]}: unknown key; valid: {', '.join(sorted(REPORT_KEYS))}")
    if "order" in report and not (isinstance(report["order"], int) and not isinstance(report["order"], bool)):
        raise GridError(f"{where}.order: expected an integer (the grid's place in the report), got {report['order']!r}")
    if "section" in report and not isinstance(report["section"], str):
        raise GridError(f"{where}.section: expected a string, got {report['section']!r}")
    if "figure" in report:
        fig = _mapping(report["figure"], f"{where}.figure")
        for key in FIGURE_KEYS:
            if not isinstance(fig.get(key), str) or not fig[key]:
                raise GridError(f"{where}.figure.{key}: expected a non-empty string, got {fig.get(key)!r}")
    claims = report.get("claims", [])
    if not (isinstance(claims, list) and all(isinstance(c, str) and c for c in claims)):
        raise GridError(f"{where}.claims: expected a list of claim ids, got {claims!r}")
    if len(set(claims)) != len(claims):
        raise GridError(f"{where}.claims: repeated claim in {claims}")
    return report


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return "\n".join(lines).strip()


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    """The grid file's text and its top-level mapping (one-line errors for a missing or bad file)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GridError(f"{path}: no such grid file") from None
    try:
        spec = yamlfile.load(text)
    except yamlfile.DuplicateKeyError as e:
        raise GridError(f"{path}: {e}") from None
    except yamlfile.yaml.YAMLError as e:
        raise GridError(f"{path}: not valid YAML ({yamlfile.first_line(e)})") from None
    return text, _mapping(spec, str(path))


def _seeds(seeds: Any, path: Path | str) -> list[int]:
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise GridError(f"{path}: seeds: expected a non-empty list of integers, got {seeds!r}")
    if any(s < 0 for s in seeds):
        raise GridError(f"{path}: seeds: must be >= 0, got {min(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{path}: seeds: repeated seed in {seeds}")
    return seeds


def _shapes(blocks: list, axis_over: dict[str, list], path: Path) -> list[tuple]:
    """Pass 1: each block's structure (fixed keys, axes, zipped groups), before any expansion."""
    shapes = []
    for i, block in enumerate(blocks):
        where = f"{path}: blocks[{i}]"
        block = _mapping(block, where)
        bad = set(block) - BLOCK_KEYS
        if bad:
            raise GridError(f"{where}.{sorted(bad)[0]}: unknown key; valid: {', '.join(sorted(BLOCK_KEYS))}")
        fixed = _mapping(block.get("set"), f"{where}.set")
        axes = _axes(block.get("axes"), f"{where}.axes")
        axes = {k: axis_over.get(k, v) for k, v in axes.items()}
        zips = block.get("zip") or []
        if not isinstance(zips, list):
            raise GridError(f"{where}.zip: expected a list of mappings")
        groups: list[list[dict[str, Any]]] = []
        for j, z in enumerate(zips):
            z = _axes(z, f"{where}.zip[{j}]")
            lengths = {len(v) for v in z.values()}
            if len(lengths) > 1:
                raise GridError(f"{where}.zip[{j}]: zipped lists differ in length {sorted(lengths)}")
            groups.append([dict(zip(z, vals)) for vals in zip(*z.values())])
        seeds = _seeds(block["seeds"], f"{where}.seeds") if "seeds" in block else None
        _mem(block.get("mem_gb"), f"{where}.mem_gb")
        shapes.append((where, block, fixed, axes, groups, seeds))
    return shapes


def _mem(value: Any, where: str) -> float | None:
    """A declared peak memory (GiB > 0), or None where none is declared."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise GridError(f"{where}: expected a number of GiB > 0, got {value!r}")
    return value


def _expand(name: str, scale: str, shapes: list[tuple], base: dict[str, Any], seeds: list[int],
            check_paths: bool, mem_gb: float | None = None) -> list[Run]:
    """Pass 2: every run's resolved config; the same config from two blocks is one run."""
    runs: list[Run] = []
    seen: dict[str, Run] = {}
    for i, (where, block, fixed, axes, groups, block_seeds) in enumerate(shapes):
        axis_points = [dict(zip(axes, vals)) for vals in itertools.product(*axes.values())]
        for point in itertools.product(axis_points, *groups):
            varied: dict[str, Any] = dict(fixed)  # a block's fixed keys set it apart too
            for part in point:
                varied.update(part)
            for seed in block_seeds or seeds:
                layer = {**base, **fixed, **varied, "seed": seed}
                try:
                    cfg = config_lib.resolve(layer, check_paths=check_paths)
                except config_lib.ConfigError as e:
                    raise GridError(f"{where}: {e}") from None
                run = Run(name, scale, cfg, str(block.get("label", i)), varied,
                          block.get("mem_gb", mem_gb))
                if run.run_id in seen:
                    continue  # the same resolved config from two blocks is one run
                seen[run.run_id] = run
                runs.append(run)
    return runs


def _step_budget(runs: list[Run], path: Path, check_paths: bool) -> list[Run]:
    """``budget: steps``: each training run gets the optimizer and warmup steps of the grid's
    smallest batch (its epochs at that batch); a run that sets ``steps`` itself keeps them."""
    train = [r for r in runs if r.config["task"] == "train" and not r.config["steps"]]
    if not train:
        return runs
    smallest = min(r.config["batch_size"] for r in train)
    out = []
    for r in runs:
        c = r.config
        if r not in train:
            out.append(r)
            continue
        size = config_lib.train_size(c)
        layer = {k: v for k, v in c.items() if k != "model_overrides"}
        layer.update(model_overrides=c["model_overrides"],
                     steps=max(1, math.ceil(c["epochs"] * size / smallest)),
                     # warmup is counted in epochs of this run's batch: the same steps as the smallest's
                     warmup_epochs=c["warmup_epochs"] * c["batch_size"] / smallest)
        try:
            cfg = config_lib.resolve(layer, check_paths=check_paths)
        except config_lib.ConfigError as e:
            raise GridError(f"{path}: budget: steps: {e}") from None
        out.append(dataclasses.replace(r, config=cfg))
    return out


def load(path: str | Path, scale: str = "local", *, check_paths: bool | None = None,
         max_runs: int = MAX_RUNS) -> Grid:
    """Parses, expands and validates a grid file at ``scale``.

    Data paths are checked except at the paper scale, which runs on a cluster (its runs check
    their data when they start). The number of runs is counted before anything is expanded,
    and a grid over ``max_runs`` is refused.
    """
    check_paths = scale != "paper" if check_paths is None else check_paths
    path = Path(path)
    if scale not in SCALES:
        raise GridError(f"scale: unknown {scale!r}; valid: {', '.join(SCALES)}")
    text, spec = _read(path)
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise GridError(f"{path}: {sorted(unknown)[0]}: unknown key; valid: {', '.join(sorted(TOP_KEYS))}")
    name = spec.get("name")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise GridError(f"{path}: name: expected a short identifier, got {name!r}")
    spec_base = _mapping(spec.get("base"), f"{path}: base")
    scales = _mapping(spec.get("scales"), f"{path}: scales")
    for s in scales:
        if s not in SCALES:
            raise GridError(f"{path}: scales.{s}: unknown scale; valid: {', '.join(SCALES)}")
    if scale not in scales:
        raise GridError(f"{path}: scales.{scale}: this grid defines no {scale!r} scale")
    over = _mapping(scales[scale], f"{path}: scales.{scale}")
    bad = set(over) - SCALE_KEYS
    if bad:
        raise GridError(f"{path}: scales.{scale}.{sorted(bad)[0]}: unknown key; valid: {', '.join(sorted(SCALE_KEYS))}")
    base = {**spec_base, **_mapping(over.get("base"), f"{path}: scales.{scale}.base")}
    seeds = _seeds(over.get("seeds", spec.get("seeds", [0])), path)
    axis_over = _axes(over.get("axes"), f"{path}: scales.{scale}.axes")
    blocks = over.get("blocks", spec.get("blocks"))
    if not isinstance(blocks, list) or not blocks:
        raise GridError(f"{path}: blocks: expected a non-empty list of blocks")
    report = _report(spec.get("report"), f"{path}: report")
    aggregate = _mapping(over.get("aggregate", spec.get("aggregate")), f"{path}: aggregate")
    best = aggregate.get("best")
    if best is not None and not (isinstance(best, int) and 1 <= best <= len(seeds)):
        raise GridError(f"{path}: aggregate.best: expected an integer in 1..{len(seeds)}, got {best!r}")

    shapes = _shapes(blocks, axis_over, path)
    size = sum(len(bseeds or seeds) * math.prod(len(v) for v in axes.values()) * math.prod(len(g) for g in groups)
               for _, _, _, axes, groups, bseeds in shapes)
    if size > max_runs:
        raise GridError(f"{path}: grid size: {size:,} runs exceeds the limit of {max_runs:,} "
                        "(pass --max-runs to allow it)")
    budget = over.get("budget", spec.get("budget", "epochs"))
    if budget not in BUDGETS:
        raise GridError(f"{path}: budget: unknown {budget!r}; valid: {', '.join(BUDGETS)}")
    mem_gb = _mem(over.get("mem_gb"), f"{path}: scales.{scale}.mem_gb")
    runs = _expand(name, scale, shapes, base, seeds, check_paths, mem_gb)
    if budget == "steps":
        runs = _step_budget(runs, path, check_paths)
    return Grid(name, path, scale, runs, aggregate, _header(text), report, mem_gb)
