"""study: a reproducibility and ablation harness for Normalizer-Free Networks.

Brock, De, Smith, Simonyan, "High-Performance Large-Scale Image Recognition Without
Normalization", ICML 2021 (arXiv 2102.06171).
"""

__version__ = "0.1.0"

from study import xla_flags as _xla_flags

_xla_flags.apply()  # before any JAX backend starts: see study/xla_flags.py
