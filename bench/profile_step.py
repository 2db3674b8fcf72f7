"""Where a train step's time goes, per XLA thunk: the same step with and without AGC.

``python -m bench.profile_step nf-resnet-50 32 --resolution 32 [--steps 6]`` profiles the full
training step of ``study.engine.latency`` (forward, backward, AGC, weight decay, Nesterov SGD,
EMA) with ``jax.profiler`` twice, AGC on and off, each in its own process (the HLO dump that
names each thunk's source must be set before JAX starts). Every thunk's time is put in a class by
the files on the JAX stack of the HLO instructions it runs (``agc.py``, the optimizer,
``ws_conv.py``'s standardisation and the convolutions it calls, the rest of the model, the step's
loss, EMA and metrics), and the two sides are printed class by class: where AGC's share of the
step goes. Thunk times are summed over XLA's threads, so they add up to more than the wall time. The profile behind BENCHMARKS.md's AGC discussion; not part of
`make bench`.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Which part of the step an HLO instruction belongs to, by the files on its JAX trace's stack
# (innermost class first: an AGC op's stack also holds the optimizer's and the step's files).
CLASSES = (("agc", ("engine/agc.py",)), ("optimizer", ("engine/optim.py", "optax/")),
           ("ws_conv (standardise + conv)", ("models/ws_conv.py",)), ("model", ("models/",)),
           ("step (loss, EMA, metrics)", ("engine/step.py", "engine/tree_sum.py")))
INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^=]*?\b([a-z][a-z\-]*)\(")
CALLS = re.compile(r"calls=%?([\w.\-]+)")
FRAME = re.compile(r"stack_frame_id=(\d+)")


def _tables(text: str) -> dict[int, set[str]]:
    """stack frame id → the files on that stack, from the dump's FileNames / FileLocations /
    StackFrames tables."""
    files: dict[int, str] = {}
    locs: dict[int, int] = {}
    frames: dict[int, tuple[int, int]] = {}
    section = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        head, _, rest = line.partition(" ")
        if section is None or not head.isdigit():
            continue
        i = int(head)
        if section == "FileNames":
            files[i] = rest.strip('"')
        elif section == "FileLocations":
            locs[i] = int(re.search(r"file_name_id=(\d+)", rest).group(1))
        elif section == "StackFrames":
            frames[i] = (int(re.search(r"file_location_id=(\d+)", rest).group(1)),
                         int(re.search(r"parent_frame_id=(\d+)", rest).group(1)))
    out: dict[int, set[str]] = {}
    for i in frames:
        seen, j = set(), i
        while j in frames and j not in seen and j not in out:
            seen.add(j)
            j = frames[j][1]
        stack = {files.get(locs.get(frames[k][0], -1), "") for k in seen} | out.get(j, set())
        out[i] = stack
    return out


def classify(files: set[str], opcode: str) -> str:
    """A thunk's class: a convolution is one; otherwise the first class any of its sources is in."""
    if opcode == "convolution" or "convolution" in files:
        return "convolution"
    for name, marks in CLASSES:
        if any(m in f for f in files for m in marks):
            return name
    return "other"


def hlo_classes(text: str) -> dict[str, str]:
    """Instruction name → class, from an optimized HLO module's text (fusions by their body)."""
    stacks = _tables(text)
    bodies: dict[str, set[str]] = collections.defaultdict(set)
    current = None
    entries: list[tuple[str, str, str | None, set[str]]] = []
    for line in text.splitlines():
        if line.rstrip().endswith("{") and not line.startswith(" "):
            current = "ENTRY" if line.startswith("ENTRY") else line.split()[0].lstrip("%")
            continue
        m = INSTR.match(line)
        if not m or current is None:
            continue
        frame = FRAME.search(line)
        files = set(stacks.get(int(frame.group(1)), set())) if frame else set()
        if m.group(2) == "convolution":
            files.add("convolution")
        bodies[current] |= files
        calls = CALLS.search(line)
        entries.append((m.group(1), m.group(2), calls.group(1) if calls else None, files))
    return {name: classify(files | (bodies.get(callee, set()) if callee else set()), op)
            for name, op, callee, files in entries}


def side(model: str, batch: int, resolution: int, steps: int, agc: bool, work: Path,
         convention: str = "timm") -> dict[str, Any]:
    """One process's profile (runs in a child: ``--side``)."""
    import jax

    from study.engine import latency

    p = latency.prepare(model, batch=batch, resolution=resolution, agc=agc, convention=convention)
    p.run(3)
    trace = work / "trace"
    with jax.profiler.trace(str(trace), create_perfetto_trace=True):
        wall = p.run(steps)
    events = json.loads(gzip.open(next(trace.rglob("*trace.json.gz"))).read())
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    dumps = sorted((work / "dump").glob("*last_step*after_optimizations.txt"), key=lambda f: f.stat().st_size)
    classes = hlo_classes(dumps[-1].read_text()) if dumps else {}
    per_class: dict[str, float] = collections.Counter()
    per_thunk: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in classes:
            continue
        per_class[classes[e["name"]]] += e["dur"] / 1000 / steps
        per_thunk[e["name"]] += e["dur"] / 1000 / steps
    if not per_thunk:  # the trace names nothing of the dump: say what it does name
        names = collections.Counter(e.get("name") for e in events if e.get("ph") == "X")
        raise SystemExit(f"no thunk of the HLO dump in the trace; its commonest events: {names.most_common(15)}")
    top = [(n, round(ms, 3), classes[n]) for n, ms in per_thunk.most_common(12)]
    return {"agc": agc, "step_ms": 1000 * sorted(wall)[len(wall) // 2], "thunks": len(per_thunk),
            "thunk_ms": round(sum(per_thunk.values()), 2),
            "classes": {k: round(v, 2) for k, v in sorted(per_class.items(), key=lambda kv: -kv[1])},
            "counts": dict(collections.Counter(classes[n] for n in per_thunk)), "top": top}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("batch", type=int)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--convention", default="timm", choices=("timm", "deepmind"),
                    help="the network's convention (default timm: the network make bench times)")
    ap.add_argument("--side", choices=("on", "off"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        out = side(a.model, a.batch, a.resolution, a.steps, a.side == "on", a.work, a.convention)
        (a.work / "side.json").write_text(json.dumps(out))
        return
    results = {}
    for s in ("on", "off"):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            env = dict(os.environ, XLA_FLAGS=" ".join(filter(None, [
                os.environ.get("XLA_FLAGS", ""), f"--xla_dump_to={work / 'dump'}", "--xla_dump_hlo_as_text",
                "--xla_dump_hlo_module_re=.*last_step.*", "--xla_cpu_enable_xprof_traceme=true"])))
            subprocess.run([sys.executable, "-m", "bench.profile_step", a.model, str(a.batch), "--resolution",
                            str(a.resolution), "--steps", str(a.steps), "--convention", a.convention,
                            "--side", s, "--work", str(work)],
                           env=env, check=True)
            results[s] = json.loads((work / "side.json").read_text())
    on, off = results["on"], results["off"]
    print(f"{a.model} batch {a.batch} at {a.resolution} px, {a.steps} profiled steps each")
    print(f"step (median, wall): AGC on {on['step_ms']:.1f} ms, off {off['step_ms']:.1f} ms "
          f"({100 * (on['step_ms'] / off['step_ms'] - 1):+.1f}%); thunks {on['thunks']} / {off['thunks']}, "
          f"their time {on['thunk_ms']:.1f} / {off['thunk_ms']:.1f} ms")
    print(f"{'class':<30}{'on ms':>9}{'off ms':>9}{'diff':>9}{'thunks on/off':>15}")
    for k in dict.fromkeys([*on["classes"], *off["classes"]]):
        x, y = on["classes"].get(k, 0.0), off["classes"].get(k, 0.0)
        print(f"{k:<30}{x:9.2f}{y:9.2f}{x - y:+9.2f}{on['counts'].get(k, 0):>8}/{off['counts'].get(k, 0)}")
    print("slowest thunks with AGC:", ", ".join(f"{n} {ms} ms ({c})" for n, ms, c in on["top"]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
