"""The ``study`` command line. ``study --help`` lists the subcommands."""

from __future__ import annotations

import argparse
import json
import sys


def _models(args: argparse.Namespace) -> int:
    from study import models

    names = args.names or models.names()
    unknown = [n for n in names if n not in models.PRESETS]
    if unknown:
        print(f"error: model: unknown {unknown[0]!r}; valid: {', '.join(models.names())}",
              file=sys.stderr)
        return 2
    header = f"{'name':16} {'family':10} {'train/test px':>13}"
    if args.count:
        header += f" {'params (M)':>11} {'MACs@test (M)':>14}"
    print(header)
    for name in names:
        preset = models.PRESETS[name]
        line = f"{name:16} {preset.family:10} {preset.train_resolution:>6}/{preset.test_resolution:<6}"
        if args.count:
            s = models.structure(name)
            line += f" {s.params / 1e6:>11.2f} {s.macs / 1e6:>14.1f}"
        print(line)
    return 0


def _say(*parts: object) -> None:
    """print() that outlives its reader: after ``| head`` closes the pipe, output stops and the
    command goes on (a launcher must keep watching its runs)."""
    try:
        print(*parts, flush=True)
    except BrokenPipeError:
        _detach_stdout()


def _detach_stdout() -> None:
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # later writes (and the exit flush) go nowhere


def _train(args: argparse.Namespace) -> int:
    import logging

    from study import config as config_lib
    from study import runlock
    from study import status as run_status

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
    logging.getLogger("jax").setLevel(logging.WARNING)  # "Unable to initialize backend 'tpu'"
    try:
        layers = [config_lib.load_file(args.config)] if args.config else []
        cfg = config_lib.resolve(*layers, config_lib.parse_set(args.set))
        from study.engine.train import train

        result = train(args.workdir, cfg)
    except (config_lib.ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runlock.Busy as e:
        print(f"error: {e}", file=sys.stderr)
        return run_status.BUSY_EXIT
    _say(json.dumps({k: result.get(k) for k in ("status", "steps", "top1", "top5", "ema_top1",
                                                 "step_time_ms")}))
    return 0


def _latency(args: argparse.Namespace) -> int:
    from study.engine import latency

    try:
        out = latency.measure(args.model, batch=args.batch, resolution=args.resolution,
                              steps=args.steps, dtype=args.dtype)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


def _load_grid(args: argparse.Namespace):
    """The grid of ``args.file`` at ``args.scale``, or None after a one-line error."""
    from study.grids import grid as grid_lib

    try:
        return grid_lib.load(args.file, args.scale,
                             max_runs=getattr(args, "max_runs", None) or grid_lib.MAX_RUNS)
    except grid_lib.GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _grid(args: argparse.Namespace) -> int:
    from study.grids import launch

    g = _load_grid(args)
    if g is None:
        return 2
    if args.action == "run":
        if not args.no_reuse:
            from study.grids import reuse

            reuse.adopt(g, args.runs_dir, log=_say)
        if args.backend == "slurm":
            from study.grids import slurm

            try:
                profile = slurm.load_profile(args.profile)
            except slurm.ProfileError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            slurm.submit(g, args.runs_dir, profile, log=_say)
            return 0
        outcome = launch.run_local(g, args.runs_dir, jobs=args.jobs, retries=args.retries, log=_say)
        code = _grid_table(g, args, show_status=True)
        if outcome["failed_runs"]:
            print(f"error: {len(outcome['failed_runs'])} run(s) failed: "
                  f"{', '.join(outcome['failed_runs'])} (train.log in each run directory)", file=sys.stderr)
            return 1
        return 130 if outcome["interrupted"] else code
    return _grid_table(g, args, show_status=args.action == "status")


def _grid_table(g, args: argparse.Namespace, show_status: bool) -> int:
    """The runs of a grid, one per line, with their status and result (and SLURM's word on
    submitted runs); 1 if any record is bad."""
    from study import status as run_status
    from study.grids import slurm

    print(f"{g.name} ({g.scale}): {len(g.runs)} runs" + (f" — {g.header.splitlines()[0]}" if g.header else ""))
    keys = sorted({k for r in g.runs for k in r.varied})
    jobs = {r.run_id: r.record(args.runs_dir).slurm_job() for r in g.runs} if show_status else {}
    queue = slurm.job_states([j for j in jobs.values() if j]) if any(jobs.values()) else {}
    head = f"{'run_id':12}  {'label':12} " + " ".join(f"{k:>12}" for k in keys) + f" {'seed':>5}"
    if show_status:
        head += f"  {'status':11} {'result':>9}" + ("  slurm" if any(jobs.values()) else "")
    print(head)
    counts: dict[str, int] = {}
    incomplete = []
    for r in g.runs:
        line = f"{r.run_id:12}  {r.label:12} " + " ".join(
            f"{str(r.varied.get(k, '')):>12}" for k in keys) + f" {r.config['seed']:>5}"
        if show_status:
            rec = r.record(args.runs_dir)
            st = rec.status()
            counts[st] = counts.get(st, 0) + 1
            shown = ""
            if st == run_status.Status.INCOMPLETE:
                incomplete.append(r.run_id)
            if st in run_status.FINISHED:  # top-1, or a latency run's step time
                res = rec.result()
                t, ms = res.get("top1"), res.get("latency_ms")
                shown = f"{t:.4f}" if t is not None else f"{ms:.1f} ms" if ms is not None else "-"
            line += f"  {st:11} {shown:>9}"
            if jobs.get(r.run_id):
                line += f"  {jobs[r.run_id]} {queue.get(jobs[r.run_id], 'unknown to SLURM')}"
        print(line)
    if counts:
        print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if incomplete:
        print(f"error: {', '.join(incomplete)}: result.json says done without its final metrics; "
              "`study grid run` re-evaluates from the final checkpoint", file=sys.stderr)
        return 1
    return 0


def _results(args: argparse.Namespace) -> int:
    from study.analysis import results

    g = _load_grid(args)
    if g is None:
        return 2
    df, out = results.write(g, args.runs_dir)
    print(f"{len(df)} runs ({(df['status'] == 'done').sum()} done) -> {out}/results.parquet, results.csv")
    return 0


def _report(args: argparse.Namespace) -> int:
    from study.grids import grid as grid_lib
    from study.analysis import report

    if args.scale not in grid_lib.SCALES:
        print(f"error: scale: unknown {args.scale!r}; valid: {', '.join(grid_lib.SCALES)}", file=sys.stderr)
        return 2
    from pathlib import Path

    from study.analysis import reference

    signal = None if args.no_signal else ("nf-resnet-50", "resnet-50")
    # --ship writes the reference itself (reports/<scale>), so it is compared with nothing.
    out = args.out or (str(Path("reports") / args.scale) if args.ship else "reports")
    ref = None if args.ship or args.no_reference else (args.reference or reference.default_dir(args.scale, out))
    if ref is not None and not (Path(ref) / reference.MANIFEST).exists():
        print(f"error: --reference {ref}: no shipped reference there ({reference.MANIFEST} missing; "
              "make reference writes one)", file=sys.stderr)
        return 2
    if args.only and not args.ship:
        print("error: --only: rebuilds part of a shipped reference, so it needs --ship", file=sys.stderr)
        return 2
    if args.only and not (Path(out) / reference.MANIFEST).exists():
        print(f"error: --only: {out} holds no shipped reference to keep the other grids from "
              f"({reference.MANIFEST} missing)", file=sys.stderr)
        return 2
    try:
        index = report.build(args.scale, args.runs_dir, out, args.grids, signal_models=signal,
                             reference=ref, ship=args.ship, only=args.only)
    except ValueError as e:
        print(f"error: --{e}", file=sys.stderr)
        return 2
    print(f"{index} (figures, comparison.csv, claims.csv beside it)")
    if ref is not None:
        import pandas as pd

        print(reference.summary(pd.read_csv(Path(out) / "reference.csv"), ref, args.scale))
    return 0


def _readme(args: argparse.Namespace) -> int:
    from study.analysis import readme

    try:
        changed = readme.rewrite(args.readme, args.reference)
    except (readme.MarkersMissing, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.readme}: local results from {args.reference} {'rewritten' if changed else 'unchanged'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from study import __version__

    parser = argparse.ArgumentParser(prog="study", description=__doc__)
    parser.add_argument("--version", action="version", version=f"study {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("names", nargs="*", help="only these models")
    p.add_argument("--count", action="store_true",
                   help="also count parameters and MACs at the test resolution (abstractly)")
    p.set_defaults(func=_models)
    from study import config as config_lib

    p = sub.add_parser("train", help="train (or resume) one run",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=config_lib.help_text())
    p.add_argument("--workdir", required=True, help="run directory (relaunch to resume)")
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key (repeatable); model knobs as model.<knob>=value")
    p.set_defaults(func=_train)
    gp = sub.add_parser("grid", help="ablation grids: show, status, run")
    gsub = gp.add_subparsers(dest="action", required=True)
    for action, text in (("show", "print the runs without launching"),
                         ("status", "done / running / diverged / failed / missing per run"),
                         ("run", "train what is missing, resume what is partial")):
        q = gsub.add_parser(action, help=text)
        q.add_argument("file")
        q.add_argument("--scale", default="local", help="smoke | local | paper")
        q.add_argument("--runs-dir", default="runs", help="root of the run directories")
        if action == "run":
            q.add_argument("--backend", choices=("local", "slurm"), default="local")
            q.add_argument("--profile", default="slurm/local.yaml", help="SLURM profile (slurm/*.yaml)")
            q.add_argument("--no-reuse", action="store_true",
                           help="train every run, even one another grid finished with the same config")
            q.add_argument("--jobs", type=int, default=None, help="parallel runs (default: by cores/memory)")
            q.add_argument("--retries", type=int, default=1,
                           help="resume a run that died of a signal this many times (default 1)")
        q.add_argument("--max-runs", type=int, default=None,
                       help="refuse grids larger than this (default: study.grids.grid.MAX_RUNS)")
        q.set_defaults(func=_grid)
    p = sub.add_parser("results", help="gather a grid's runs into results.parquet / .csv")
    p.add_argument("file")
    p.add_argument("--scale", default="local")
    p.add_argument("--runs-dir", default="runs")
    p.set_defaults(func=_results)
    p = sub.add_parser("report", help="figures, comparison with the paper and claim checks -> OUT/index.html")
    p.add_argument("--scale", default="local", help="smoke | local | paper")
    p.add_argument("--runs-dir", default="runs", help="root of the run directories")
    p.add_argument("--out", default=None, help="output directory (default: reports; with --ship reports/<scale>)")
    p.add_argument("--grids", default="ablations", help="directory of grid files")
    p.add_argument("--no-signal", action="store_true", help="skip the signal-propagation plot (its forward passes)")
    p.add_argument("--reference", default=None, metavar="DIR",
                   help="shipped reference to compare each cell with -> OUT/reference.csv "
                        "(default: reports/<scale> when it exists and is not OUT)")
    p.add_argument("--no-reference", action="store_true", help="compare with no shipped reference")
    p.add_argument("--ship", action="store_true",
                   help="write the report as the shipped reference (default OUT reports/<scale>): "
                        "per-grid results.csv without machine paths, grids.json; never checkpoints")
    p.add_argument("--only", nargs="+", default=None, metavar="GRID",
                   help="with --ship: rebuild only these grids from the runs; the others keep the results "
                        "and curves already shipped in OUT (marked as carried over)")
    p.set_defaults(func=_report)
    p = sub.add_parser("readme", help="rewrite README's local-results block from a shipped reference")
    p.add_argument("--reference", default="reports/local", help="shipped reference directory")
    p.add_argument("--readme", default="README.md", help="the file with the local-results markers")
    p.set_defaults(func=_readme)
    p = sub.add_parser("latency", help="training-step latency by the paper's protocol (App. A.2)")
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=None, help="default: the model's train resolution")
    p.add_argument("--steps", type=int, default=20, help="timed steady-state steps")
    p.add_argument("--dtype", choices=config_lib.DTYPES, default="float32")
    p.set_defaults(func=_latency)
    return parser


def main(argv: list[str] | None = None) -> int:
    # SIGPIPE stays ignored (Python's default): a training process writes to sockets and pipes
    # of its own (orbax's event loops), and the default action would kill it on any EPIPE.
    # A closed stdout is handled where output is written (``_say``, and ``main`` for the rest).
    args = _parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not as noise at interpreter exit
        return code
    except BrokenPipeError:  # `study grid status ... | head`: end quietly
        _detach_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a reader gone


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
