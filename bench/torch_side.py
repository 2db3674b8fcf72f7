"""The PyTorch side of the benchmark: timm's NormFreeNet trained step by step, as a worker.

Run by ``.venv-torch/bin/python bench/torch_side.py`` (torch, torchvision and timm pinned in
bench/requirements-torch.lock); it imports nothing from ``study``, so the two sides share no
code, only the configurations below. It reads one JSON command per line on stdin and answers
one JSON line on stdout, so the orchestrator can interleave its timing rounds with the JAX
side's (on a shared machine load drifts; only interleaved medians compare fairly):

    {"cmd": "setup", "model": "nf-resnet-nano", "batch": 32, "resolution": 28,
     "mode": "eager" | "compile", "threads": 2, "agc": 0.16}  -> {"params", "first_step_s", ...}
    {"cmd": "run", "steps": 3}                                 -> {"times": [seconds, ...]}
    {"cmd": "parity", "path": "x.npz"}                          -> writes state_dict, input, logits
    {"cmd": "peak", "threads": 2}                               -> torch matmul / conv FLOP/s
    {"cmd": "quit"}

The training step is the project's, in PyTorch: normalise the uint8 batch, forward, label-
smoothed cross-entropy, backward, AGC (timm's ``adaptive_clip_grad``, classifier weight
excluded as the project does), SGD with Nesterov momentum 0.9 and L2 weight decay on the
weights only, and an EMA of the parameters.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.nfnet import NfCfg, NormFreeNet
from timm.utils.agc import adaptive_clip_grad

# Each project preset with convention="timm" is exactly this timm network (bench/run.py checks
# the parameter counts, and logits on the nano presets after loading these weights).
NANO = dict(depths=(1, 1, 1, 1), stem_type="3x3", stem_chs=16)
CONFIGS: dict[str, tuple[NfCfg, dict[str, Any]]] = {
    "nf-resnet-nano": (
        NfCfg(channels=(32, 64, 128, 256), bottle_ratio=0.25, act_layer="relu", **NANO),
        dict(in_chans=1, num_classes=10, drop_rate=0.0, drop_path_rate=0.1),
    ),
    "nfnet-nano": (
        NfCfg(channels=(32, 64, 192, 192), group_size=16, bottle_ratio=0.5, extra_conv=True,
              gamma_in_act=True, same_padding=True, skipinit=True, num_features=384,
              act_layer="gelu", attn_layer="se", attn_kwargs=dict(rd_ratio=0.5), **NANO),
        dict(in_chans=1, num_classes=10, drop_rate=0.2, drop_path_rate=0.25),
    ),
}
TIMM_NAMES = {"nf-resnet-50": ("nf_resnet50", 0.0, 0.1), "nfnet-f0": ("dm_nfnet_f0", 0.2, 0.25)}
NO_DECAY = ("gain", "bias", "skipinit_gain")


def build(name: str) -> nn.Module:
    if name in TIMM_NAMES:
        import timm

        timm_name, drop, drop_path = TIMM_NAMES[name]
        return timm.create_model(timm_name, pretrained=False, drop_rate=drop,
                                 drop_path_rate=drop_path)
    cfg, kw = CONFIGS[name]
    model = NormFreeNet(cfg, **kw)
    # timm gives stage 0 stride 2 after a stride-2 '3x3' stem; the nano presets keep stride 1
    # there (the project's strides (1, 2, 2, 2)). Same padding either way, so set it in place.
    first = model.stages[0][0]
    first.conv2.stride = (1, 1)
    if first.downsample is not None:
        first.downsample.pool = nn.Identity()
    return model


class Trainer:
    """One model, its optimizer, EMA and a fixed synthetic batch; ``step`` is one train step."""

    def __init__(self, spec: dict[str, Any]):
        torch.manual_seed(spec.get("seed", 0))
        self.model = build(spec["model"]).train()
        if spec.get("channels_last"):
            self.model = self.model.to(memory_format=torch.channels_last)
        chans = self.model.in_chans if hasattr(self.model, "in_chans") else 3
        b, r = spec["batch"], spec["resolution"]
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (b, chans, r, r), generator=g, dtype=torch.uint8)
        self.y = torch.randint(0, self.model.num_classes, (b,), generator=g)
        self.mean, self.std = 0.5 * 255, 0.25 * 255
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if n.rsplit(".", 1)[-1] not in NO_DECAY]
        rest = [p for n, p in named if n.rsplit(".", 1)[-1] in NO_DECAY]
        self.opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": 2e-5}, {"params": rest, "weight_decay": 0.0}],
            lr=0.1, momentum=0.9, nesterov=True,
        )
        self.agc = spec.get("agc", 0.16)
        self.clip = [p for n, p in named if n != "head.fc.weight"]
        self.params = [p for _, p in named]
        self.ema = [p.detach().clone() for p in self.params]
        self.forward = torch.compile(self.model) if spec["mode"] == "compile" else self.model
        self.count = sum(p.numel() for p in self.params)
        self.t = 0

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        x = (self.x.float() - self.mean) / self.std
        logits = self.forward(x)
        loss = F.cross_entropy(logits, self.y, label_smoothing=0.1)
        loss.backward()
        if self.agc:
            adaptive_clip_grad(self.clip, clip_factor=self.agc, eps=1e-3)
        self.opt.step()
        with torch.no_grad():
            d = min(0.999, (1 + self.t) / (10 + self.t))
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - d)
        self.t += 1
        return float(loss.item())


def peak(threads: int) -> dict[str, float]:
    """FLOP/s of a large f32 matmul and a large 3×3 conv (best of a few), on ``threads``."""
    torch.set_num_threads(threads)
    n = 1024  # the same kernels as bench/peak.py
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, w = torch.randn(32, 128, 28, 28), torch.randn(128, 128, 3, 3)
    out = {}
    for name, fn, flop in (
        ("matmul", lambda: a @ b, 2 * n**3),
        ("conv", lambda: F.conv2d(x, w, padding=1), 2 * 32 * 28 * 28 * 128 * 128 * 9),
    ):
        fn()
        best = min(_timed(fn) for _ in range(3))
        out[name] = flop / best
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@torch.no_grad()
def parity(trainer: Trainer, path: str) -> None:
    """Writes the state_dict, an input and eval-mode logits for the JAX side to compare."""
    model = trainer.model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, trainer.x.shape[1], trainer.x.shape[2], trainer.x.shape[3], generator=g)
    arrays = {f"sd/{k}": v.detach().float().numpy() for k, v in model.state_dict().items()}
    np.savez(path, input=x.numpy(), logits=model(x).numpy(), **arrays)
    model.train()


def main() -> None:
    torch.set_num_interop_threads(1)
    trainer: Trainer | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "setup":
                torch.set_num_threads(cmd["threads"])
                t0 = time.perf_counter()
                trainer = Trainer(cmd)
                t1 = time.perf_counter()
                trainer.step()  # torch.compile compiles here
                reply = {"params": trainer.count, "build_s": t1 - t0,
                         "first_step_s": time.perf_counter() - t1, "threads": torch.get_num_threads(),
                         "torch": torch.__version__}
            elif cmd["cmd"] == "run":
                times = []
                for _ in range(cmd["steps"]):
                    t0 = time.perf_counter()
                    trainer.step()
                    times.append(time.perf_counter() - t0)
                reply = {"times": times}
            elif cmd["cmd"] == "parity":
                parity(trainer, cmd["path"])
                reply = {"path": cmd["path"]}
            elif cmd["cmd"] == "peak":
                reply = peak(cmd["threads"])
            elif cmd["cmd"] == "quit":
                break
            else:
                reply = {"error": f"unknown command {cmd['cmd']!r}"}
        except Exception as e:  # reported to the orchestrator, which records it per config
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
