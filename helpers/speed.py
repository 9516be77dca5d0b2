"""How fast against how fast it could be: the work a network costs per image, this device's peak rate,
and where an epoch's time goes (the benchmark's gflop_per_image, peak_gflop_per_s and --profile).

Measured, never looked up: FLOPs are counted by torch.utils.flop_counter over one forward and backward
pass; the peak is timed in this process, on this device, at the run's precision, with large matmuls
(the fastest thing a device does); the phases of an epoch are timed with the device synchronised at
each boundary, so that asynchronous GPU work is charged to the phase that queued it.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch

PHASES = ("data", "forward", "backward", "optimizer", "evaluation", "checkpoint")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def gflop_per_image(model: torch.nn.Module, image_size=(3, 32, 32), batch: int = 4) -> float:
    """Forward + backward GFLOP per training image, counted once on a CPU copy in fp32 (the count
    does not depend on device or precision). Convolutions and matmuls only, as torch counts them:
    the elementwise work (BatchNorm, activations) is small beside them and not counted."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(model).float().cpu().train()
    x = torch.randn(batch, *image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        net(x).float().sum().backward()
    return counter.get_total_flops() / batch / 1e9


def peak_gflop_per_s(device: torch.device, precision: str = "fp32", seconds: float = 2.0, size: int = 0) -> dict:
    """This device's practical peak: the best rate of `size`x`size` matmuls in `precision` over about
    `seconds` (what a network could at best reach; its convolutions run below it).

    Returns {"peak_gflop_per_s", "peak_source"}."""
    size = size or (8192 if device.type == "cuda" else 2048)
    dtype = DTYPES.get(precision, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: kernels chosen, memory allocated
    synchronize(device)
    best, spent = 0.0, 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 4 * 2 * size ** 3 / dt / 1e9)
    return dict(peak_gflop_per_s=round(best, 1),
                peak_source=f"measured: {size}x{size} matmul in {precision}, best of {spent:.1f} s")


class Stopwatch:
    """Seconds per phase of the training loop (PHASES). `lap(phase)` ends the phase in progress and
    charges it the time since the previous lap; `start()` begins counting (after a pause)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.t = None

    def start(self):
        synchronize(self.device)
        self.t = time.perf_counter()

    def lap(self, phase: str):
        synchronize(self.device)
        now = time.perf_counter()
        if self.t is not None:
            self.seconds[phase] += now - self.t
        self.t = now

    def table(self) -> str:
        total = sum(self.seconds.values()) or 1.0
        rows = [f"{p:<12}{self.seconds.get(p, 0.0):>9.2f} s {self.seconds.get(p, 0.0) / total:>6.1%}" for p in PHASES]
        return "\n".join(rows + [f"{'total':<12}{total:>9.2f} s"])


class _Idle:
    """What the loop uses when nobody profiles: laps cost nothing and synchronise nothing."""

    def start(self):
        pass

    def lap(self, phase: str):
        pass


IDLE = _Idle()
