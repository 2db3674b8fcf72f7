"""`python -m bench.gpu [--tiny]`: the paper's GPU speed protocol, JAX vs timm + torch.compile.

NFNet-F0's train step (batch 32, bf16, 192 px, compile excluded, median of timed steps: App.
A.2) and NF-ResNet-50's images/s (batch 128, bf16, 224 px), each against timm's same network
(bench/torch_side.py) under torch.compile and eager in worker processes, rounds interleaved.
A global deadline keeps `make bench-gpu` under 8 min; what would not fit, and a side that cannot
run, is recorded as skipped. `--tiny`: nano models on CPU in float32, for the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
TMP = ROOT / "bench" / "tmp"
WORKER_ENV = "BENCH_GPU_TORCH_WORKER"  # set: this file is the torch worker (see torch_worker)
BEGIN, END = "<!-- bench-gpu:begin -->", "<!-- bench-gpu:end -->"
PAPER_F0_V100_MS, TARGET_F0_MS = 56.7, 20.0
HARD_STOP_S = 15.0  # the watchdog's grace past --deadline-s: 450 + 15 s stays under 8 min
LIVE: set[Any] = set()  # open torch workers, so the watchdog can kill them


@dataclasses.dataclass(frozen=True)
class Case:
    key: str  # "f0" or "r50": what the targets read
    model: str
    batch: int
    resolution: int
    dtype: str
    steps: int  # timed steps per round and side
    rounds: int
    est_s: float  # both sides' compile + rounds; the case is skipped when less time is left


def plan(tiny: bool) -> list[Case]:
    if tiny:
        return [Case("f0", "nfnet-nano", 4, 28, "float32", 2, 2, 20.0),
                Case("r50", "nf-resnet-nano", 8, 28, "float32", 2, 2, 15.0)]
    # Estimates for a cold H100/H200 machine: XLA, inductor and eager cuDNN set up in turn.
    return [Case("f0", "nfnet-f0", 32, 192, "bfloat16", 10, 5, 200.0),
            Case("r50", "nf-resnet-50", 128, 224, "bfloat16", 5, 5, 160.0)]


def torch_worker() -> None:
    """The torch side: bench/torch_side.py's protocol and step, moved to CUDA with bf16 autocast."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    import torch_side

    class DeviceTrainer(torch_side.Trainer):
        def __init__(self, spec: dict[str, Any]):
            super().__init__({**spec, "channels_last": False})
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
            # Module.to keeps the Parameter objects, so the optimizer's references stay valid.
            self.model.to(device=dev, memory_format=fmt)
            self.x = self.x.to(dev).contiguous(memory_format=fmt)
            self.y = self.y.to(dev)
            self.ema = [p.detach().clone() for p in self.params]
            inner, bf16 = self.forward, spec.get("dtype") == "bfloat16"

            def forward(x: Any) -> Any:  # f32 weights, bf16 compute: as the JAX side's cast
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    return inner(x).float()

            self.forward = forward

    torch.backends.cudnn.benchmark = True  # cuDNN's autotuning, as XLA autotunes its convs
    torch_side.Trainer = DeviceTrainer  # main() looks the class up at call time
    torch_side.main()  # `step` ends in loss.item(): each timed step waits for the GPU


PROBE = ("import json, torch, timm; c = torch.cuda.is_available(); print(json.dumps({"
         "'torch': torch.__version__, 'timm': timm.__version__, 'cuda': c, "
         "'device': torch.cuda.get_device_name(0) if c else 'cpu'}))")


def probe_torch(python: str, tiny: bool) -> dict[str, Any]:
    """torch/timm versions and device in ``python``, or {"skipped": why}."""
    if not Path(python).exists():
        return {"skipped": f"{python} not found"}
    try:
        r = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"skipped": f"importing torch with {python} took over 120 s"}
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"skipped": f"torch + timm not importable with {python} ({last})"}
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if not tiny and not info["cuda"]:
        info["skipped"] = f"torch in {python} sees no CUDA GPU"
    return info


def probe_jax(tiny: bool) -> dict[str, Any]:
    """JAX's backend and device, or {"skipped": why}."""
    try:
        import jax

        import study.engine.latency  # noqa: F401  (flax, optax, PyYAML: fail here, in one line)
    except ImportError as e:
        return {"skipped": f"the JAX side is not importable ({e})"}
    jax.config.update("jax_compilation_cache_dir", str(TMP / "jax_cache"))  # faster reruns
    d = jax.devices()[0]
    info = {"backend": jax.default_backend(), "device": d.device_kind, "count": jax.device_count()}
    if not tiny and info["backend"] != "gpu":
        info["skipped"] = (f"JAX has no GPU backend (it runs on {info['backend']}): install jax "
                           "with CUDA, e.g. jax[cuda12]")
    return info


def run_case(case: Case, row: dict[str, Any], *, jax_skip: str | None, torch_skip: str | None,
             worker: dict[str, Any], deadline: float) -> None:
    """One case into ``row``: each side compiles and warms up alone, then interleaved rounds."""
    from bench.worker import Worker

    sides: dict[str, dict[str, Any]] = row.setdefault("sides", {})
    runners: dict[str, Callable[[int], list[float]]] = {}
    left = lambda: max(5.0, deadline - time.perf_counter())  # noqa: E731
    # Started now, the workers import torch while JAX compiles; their setup (compile, cuDNN
    # autotuning) waits until XLA's autotuning is done: timings taken on a shared GPU mislead.
    workers = {} if torch_skip else {m: Worker(**worker) for m in ("compile", "eager")}
    LIVE.update(workers.values())
    try:
        if jax_skip:
            sides["jax"] = {"skipped": jax_skip}
        else:
            try:
                from study.engine import latency

                p = latency.prepare(case.model, batch=case.batch, resolution=case.resolution,
                                    dtype=case.dtype, convention="timm")
                sides["jax"] = {"compile_s": p.run(1)[0]}  # the first call: XLA compilation
                p.run(3)
                row["params"] = p.info["params"]
                runners["jax"] = p.run
            except Exception as e:  # an OOM or a missing op: the torch side still runs
                sides["jax"] = {"error": f"{type(e).__name__}: {e}"}
        for mode in ("compile", "eager"):  # compile first: the targets' comparison
            if mode not in workers:
                sides[f"torch_{mode}"] = {"skipped": torch_skip}
                continue
            w = workers[mode]
            try:
                info = w.ask(timeout=left(), cmd="setup", model=case.model, batch=case.batch,
                             resolution=case.resolution, mode=mode, dtype=case.dtype,
                             threads=os.cpu_count() or 1)
                w.ask(timeout=left(), cmd="run", steps=3)  # warm-up
            except Exception as e:  # TimeoutError (killed at the deadline) or WorkerError
                sides[f"torch_{mode}"] = {"error": f"{type(e).__name__}: {e}"}
                w.close(kill=True)
                continue
            sides[f"torch_{mode}"] = {"compile_s": info["first_step_s"], "params": info["params"]}
            if row.get("params") not in (None, info["params"]):
                row.setdefault("notes", []).append(
                    f"torch {info['params']} parameters, JAX {row['params']}: not the same network")
            runners[f"torch_{mode}"] = lambda n, w=w: w.ask(timeout=left(), cmd="run",
                                                            steps=n)["times"]
        times: dict[str, list[float]] = {k: [] for k in runners}
        last = 0.0
        for r in range(case.rounds):
            ks = list(runners)
            if not ks or (r and time.perf_counter() + last > deadline):
                if ks:
                    row.setdefault("notes", []).append(f"deadline: stopped after {r} rounds")
                break
            t0 = time.perf_counter()
            for k in ks[r % len(ks):] + ks[:r % len(ks)]:  # each round starts with another side
                try:
                    times[k] += runners[k](case.steps)
                except Exception as e:  # a worker timed out or died: that side stops, not the run
                    sides[k]["error"] = f"{type(e).__name__}: {e}"
                    runners.pop(k)
            last = time.perf_counter() - t0
    finally:
        for w in workers.values():
            w.close()
            LIVE.discard(w)
    for k, t in times.items():
        if t and "error" not in sides[k]:
            med = statistics.median(t)
            sides[k].update(median_step_ms=1000 * med, images_per_s=case.batch / med,
                            min_step_ms=1000 * min(t), max_step_ms=1000 * max(t),
                            steps_timed=len(t))
    jax_ms = sides.get("jax", {}).get("median_step_ms")
    row["jax_speedup_vs"] = {k: v["median_step_ms"] / jax_ms for k, v in sides.items()
                             if k.startswith("torch") and "median_step_ms" in v and jax_ms}


def targets(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each met / not met / not measured."""
    by = {c["key"]: c for c in cases}
    f0_ms = by.get("f0", {}).get("sides", {}).get("jax", {}).get("median_step_ms")

    def speedup(key: str) -> float | None:
        return by.get(key, {}).get("jax_speedup_vs", {}).get("torch_compile")

    out = []
    for name, value, op, thr in (
        (f"NFNet-F0 train step ≤ {TARGET_F0_MS:g} ms (batch 32, bf16)", f0_ms, "<=",
         TARGET_F0_MS),
        ("NFNet-F0: JAX faster than timm + torch.compile", speedup("f0"), ">", 1.0),
        ("NF-ResNet-50: JAX faster than timm + torch.compile", speedup("r50"), ">", 1.0),
    ):
        ok = None if value is None else (value <= thr if op == "<=" else value > thr)
        out.append({"target": name, "value": value, "op": op, "threshold": thr,
                    "status": "not measured" if ok is None else "met" if ok else "not met"})
    return out


HOWTO = (
    "Written by `make bench-gpu` (`python -m bench.gpu`, into `bench/results-gpu.json`) on a "
    "machine with one NVIDIA GPU whose Python (`GPU_PY`, default `python3`) has JAX with CUDA, "
    "flax, optax, PyYAML, and torch with CUDA + timm; it ends within 8 minutes (a 450 s "
    "deadline skips, and records as skipped, what would not fit). NFNet-F0 by the paper's "
    "protocol: batch 32, bf16, 192 px, compile excluded, median of timed steps (paper: "
    f"{PAPER_F0_V100_MS} ms on one V100); NF-ResNet-50 at batch 128, bf16, 224 px. Both sides "
    "run the same network (the presets with `convention=\"timm\"`, timm's `dm_nfnet_f0` and "
    "`nf_resnet50`) and the same step (forward, label-smoothed loss, backward, AGC, weight "
    "decay, Nesterov SGD, EMA); timm's forward under torch.compile or eager, bf16 autocast, "
    "channels-last, in rounds interleaved with JAX's. A side that cannot run (no JAX GPU "
    "backend; no torch, timm or CUDA in torch) is said in one line and recorded as skipped.")


def section(res: dict[str, Any] | None) -> str:
    """The `## GPU` block, markers included; ``None``: the not-yet-run text."""
    lines = [BEGIN, "## GPU", "", HOWTO, ""]
    if res is None:
        lines.append("**Not yet run on a GPU**: no GPU was lent to the task that wrote "
                     "`bench/gpu.py`; only its tiny CPU configuration has run (the tests).")
        return "\n".join(lines + [END])
    m, dev = res["machine"], res["device"]
    if res["mode"] == "tiny":
        lines += ["**Tiny CPU configuration** (`--tiny`): nano models, float32; it exercises "
                  "the code, it measures nothing of the paper's.", ""]
    lines += [f"Commit `{m.get('commit')}`, {m.get('date')}; JAX device: "
              f"{dev['jax'].get('device', dev['jax'].get('skipped'))}; torch device: "
              f"{dev['torch'].get('device', dev['torch'].get('skipped'))}; versions "
              + ", ".join(f"{k} {v}" for k, v in res["versions"].items())
              + f"; wall {res['wall_s']:.0f} s (deadline {res['deadline_s']:.0f} s).", "",
              "| model | px | batch | dtype | JAX ms | JAX img/s | timm + compile ms | img/s "
              "| timm eager ms | img/s | JAX speed-up vs compile |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in res["cases"]:
        s = c.get("sides", {})
        if "skipped" in c:
            lines.append(f"| {c['model']} | {c['resolution']} | {c['batch']} | {c['dtype']} | "
                         f"skipped: {c['skipped']} | | | | | | |")
            continue

        def cell(side: str) -> str:
            v = s.get(side, {})
            if "median_step_ms" in v:
                return f"{v['median_step_ms']:.1f} | {v['images_per_s']:.0f}"
            return f"{v.get('skipped') or v.get('error') or '–'} | –"

        sp = c.get("jax_speedup_vs", {}).get("torch_compile")
        lines.append(f"| {c['model']} | {c['resolution']} | {c['batch']} | {c['dtype']} | "
                     f"{cell('jax')} | {cell('torch_compile')} | {cell('torch_eager')} | "
                     f"{'–' if sp is None else f'{sp:.2f}×'} |")
    lines += ["", "| target | measured | |", "|---|---|---|"]
    for t in res["targets"]:
        v = t["value"]
        shown = "–" if v is None else f"{v:.1f} ms" if t["op"] == "<=" else f"{v:.2f}×"
        lines.append(f"| {t['target']} | {shown} | {t['status']} |")
    if res.get("stopped"):
        lines += ["", f"Stopped early: {res['stopped']}."]
    return "\n".join(lines + [END])


def write_markdown(res: dict[str, Any] | None, path: str | Path) -> None:
    """Replaces the marked block of ``path`` (or appends one); the rest of the file is kept."""
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    head, sep, rest = text.partition(BEGIN)
    if sep and END in rest:
        text = head + section(res) + rest.partition(END)[2]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section(res) + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def write(res: dict[str, Any], out: str | Path, md: str | Path) -> None:
    res["targets"] = targets(res["cases"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    write_markdown(res, md)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="nano models on CPU, seconds (tests)")
    ap.add_argument("--out", help="default bench/results-gpu.json (--tiny: under bench/tmp/)")
    ap.add_argument("--markdown", help="default BENCHMARKS.md (--tiny: under bench/tmp/)")
    ap.add_argument("--deadline-s", type=float, default=450.0)
    default_py = ROOT / ".venv-torch" / "bin" / "python"  # else one Python holds both sides
    ap.add_argument("--torch-python",
                    default=str(default_py if default_py.exists() else sys.executable))
    ap.add_argument("--torch-script", default=None, help=argparse.SUPPRESS)  # tests: a stand-in
    args = ap.parse_args(argv)
    # A --tiny run never overwrites the GPU numbers unless told to.
    args.out = args.out or str(TMP / "results-gpu-tiny.json" if args.tiny
                               else ROOT / "bench" / "results-gpu.json")
    args.markdown = args.markdown or str(TMP / "BENCHMARKS-tiny.md" if args.tiny
                                         else ROOT / "BENCHMARKS.md")
    deadline = t_start + args.deadline_s

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    if not args.tiny:
        # Half the GPU for JAX, the rest for the torch workers; XLA:CPU flags (study/xla_flags.py)
        # do nothing on a GPU, and a jaxlib that no longer knows one would abort at start.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
        from study import xla_flags

        os.environ["XLA_FLAGS"] = " ".join(
            f for f in os.environ.get("XLA_FLAGS", "").split()
            if f.lstrip("-").split("=")[0] not in xla_flags.CPU_DEFAULTS)
    from importlib import metadata

    from bench import machine

    m = machine.describe()
    plugins = {d.metadata["Name"]: d.version for d in metadata.distributions()
               if (d.metadata["Name"] or "").lower().replace("_", "-").startswith("jax-cuda")}
    res: dict[str, Any] = {"mode": "tiny" if args.tiny else "gpu", "deadline_s": args.deadline_s,
                           "paper_f0_v100_ms": PAPER_F0_V100_MS, "machine": m,
                           "versions": {**m.pop("versions"), **plugins},
                           "device": {"jax": {}, "torch": {}}, "cases": []}

    def hard_stop() -> None:  # XLA compiles cannot be interrupted: the watchdog ends the run
        res["stopped"] = f"still running {HARD_STOP_S:.0f} s past the deadline; partial results"
        for w in list(LIVE):
            w.close(kill=True)
        for c in res["cases"]:  # the row in progress: what it measured stays in the JSON
            if "jax_speedup_vs" not in c and "skipped" not in c:
                c["skipped"] = "deadline (watchdog): stopped while running"
        started = {c["key"] for c in res["cases"]}
        res["cases"] += [{**dataclasses.asdict(c), "skipped": "deadline (watchdog)"}
                         for c in plan(args.tiny) if c.key not in started]
        res["wall_s"] = time.perf_counter() - t_start
        write(res, args.out, args.markdown)
        log(res["stopped"])
        os._exit(0)

    dog = threading.Timer(max(0.0, deadline + HARD_STOP_S - time.perf_counter()), hard_stop)
    dog.daemon = True
    dog.start()
    with ThreadPoolExecutor(1) as ex:  # torch's import overlaps JAX's
        if args.torch_script:
            fut = None
            tinfo: dict[str, Any] = {"torch": "stand-in", "device": "stand-in"}
        else:
            fut = ex.submit(probe_torch, args.torch_python, args.tiny)
        jinfo = probe_jax(args.tiny)
        tinfo = fut.result() if fut else tinfo
    res["device"] = {"jax": jinfo, "torch": tinfo}
    res["versions"].update({k: tinfo[k] for k in ("torch", "timm") if k in tinfo})
    try:  # the driver's version, which neither framework reports
        res["device"]["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    for side, info in (("JAX", jinfo), ("torch", tinfo)):
        log(f"{side} side skipped: {info['skipped']}" if "skipped" in info
            else f"{side} side on {info['device']}")
    env = {WORKER_ENV: "1", "TORCHINDUCTOR_CACHE_DIR": str(TMP / "inductor"),
           "TRITON_CACHE_DIR": str(TMP / "triton")}
    worker = {"python": args.torch_python, "script": args.torch_script or __file__, "env": env}
    for case in plan(args.tiny):
        row: dict[str, Any] = dataclasses.asdict(case)
        res["cases"].append(row)  # in place: the watchdog writes what there is
        left = deadline - time.perf_counter()
        if left < case.est_s:
            row["skipped"] = f"deadline: {max(0, left):.0f} s left, needs ~{case.est_s:.0f} s"
            log(f"skip {case.model}: {row['skipped']}")
            continue
        log(f"{case.model} {case.resolution}px batch {case.batch} {case.dtype}")
        run_case(case, row, jax_skip=jinfo.get("skipped"), torch_skip=tinfo.get("skipped"),
                 worker=worker, deadline=deadline)
        log("  " + ", ".join(f"{k} {v['median_step_ms']:.1f} ms" if "median_step_ms" in v else
                             f"{k} {v.get('skipped') or v.get('error')}"
                             for k, v in row["sides"].items()))
    dog.cancel()
    res["wall_s"] = time.perf_counter() - t_start
    write(res, args.out, args.markdown)
    log(f"wrote {args.out} and {args.markdown}: "
        + "; ".join(f"{t['target']}: {t['status']}" for t in res["targets"]))
    return 0


if __name__ == "__main__":
    if os.environ.get(WORKER_ENV):
        torch_worker()
    else:
        sys.exit(main())
