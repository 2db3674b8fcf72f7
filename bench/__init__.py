"""`make bench` / `make bench-quick`: this project's training speed against PyTorch + timm.

Every comparison is a ratio of medians measured in the same run with the compared sides'
rounds interleaved (the machine is shared; load drifts). ``python -m bench.run --help``.
"""

import study  # noqa: F401,E402  (the project's XLA:CPU flags, before JAX starts: study/xla_flags.py)
