"""The ``study`` command line. ``study --help`` lists the subcommands."""

from __future__ import annotations

import argparse
import sys


def _models(args: argparse.Namespace) -> int:
    from flax import nnx

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
            abstract = nnx.eval_shape(lambda: models.create(name, rngs=nnx.Rngs(0)))
            params = models.count_params(abstract) / 1e6
            macs = models.flops(name, preset.test_resolution) / 1e6
            line += f" {params:>11.2f} {macs:>14.1f}"
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    from study import __version__

    parser = argparse.ArgumentParser(prog="study", description=__doc__)
    parser.add_argument("--version", action="version", version=f"study {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("names", nargs="*", help="only these models")
    p.add_argument("--count", action="store_true",
                   help="also count parameters and MACs at the test resolution (abstractly)")
    p.set_defaults(func=_models)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
