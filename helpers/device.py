"""Where a run trains and in which precision: the per-device defaults, decided once per run.

    device = pick_device("auto")                 # CUDA, else Apple MPS, else CPU
    precision = resolve_precision("auto", device)  # see the table below
    with autocast(device, precision): ...

| device                                   | "auto" precision | why |
|------------------------------------------|------------------|-----|
| CUDA, compute capability >= 8.0 (A100, L4, H100) | bf16 autocast | bf16 tensor cores; no loss scaling needed |
| CUDA below 8.0 (T4, V100, P100)          | fp16 autocast + GradScaler | fp16 tensor cores; bf16 is emulated there |
| CPU with native bf16 (AVX-512 bf16, AMX) | bf16 autocast    | ~1.4x faster than fp32 on the project's CPU |
| any other CPU (most laptops, Colab CPU)  | fp32             | bf16 is emulated: 2x (AVX-512) to 12x (AVX2) slower |
| Apple MPS                                | fp32             | unmeasured; the safe choice (bf16/fp16 refused; NCHW) |

Numbers and how each row was checked: docs/devices.md.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch

from .errors import UserError

DEVICE_HELP = "auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps"

# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA, older name DNNL_MAX_CPU_ISA): values that keep bf16 instructions
_ONEDNN_BF16_ISAS = {"ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                     "AVX10_2_512_AMX_2"}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(device: str = "auto", log=print) -> torch.device:
    """"auto" -> CUDA, else MPS, else CPU; an unknown or missing device is one clear error.
    `log` gets one line naming the device (None: silent)."""
    name = str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise UserError(f"unknown device {device!r}; use {DEVICE_HELP}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but this machine has no CUDA GPU visible to torch; "
                            "use device 'auto' or 'cpu' (in Colab: Runtime > Change runtime type > GPU)")
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) "
                            f"are visible (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    if kind == "mps" and not _mps_available():
        raise UserError(f"device {device!r} asked for, but Apple's MPS backend is not available here "
                        "(it needs an Apple-silicon Mac); use device 'auto' or 'cpu'")
    dev = torch.device(name)
    if log:
        log(f"device: {dev} ({describe(dev)})")
    return dev


def describe(device: torch.device) -> str:
    """Human-readable hardware name, for logs and benchmark lines."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
    if device.type == "mps":
        return "Apple MPS"
    import platform

    bf16 = "native bf16" if cpu_native_bf16() else "no native bf16"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads, {bf16}"


def cpu_native_bf16() -> bool:
    """Does this CPU run bf16 matrix math in hardware (AVX-512 bf16 or AMX), as torch uses it?

    The CPU flags alone are not enough: ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY can hold
    oneDNN and ATen to older instruction sets (the project measures laptops that way), and
    then bf16 is emulated and slow even though the flags still say yes.
    """
    cpu = torch.cpu
    hardware = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    if not hardware:
        return False
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if cap not in _ONEDNN_BF16_ISAS:
        return False
    return torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")


def resolve_precision(precision: str, device: torch.device, cpu_bf16: bool | None = None) -> str:
    """The precision a run uses: explicit values pass through, "auto" follows the table above.

    `cpu_bf16` overrides the CPU check (tests force both answers with it).
    """
    if precision != "auto":
        if device.type == "mps" and precision != "fp32":
            # torch may run MPS autocast in fp32 without a word (op coverage differs by release and
            # macOS), and the run would still record the lower precision: refuse instead
            raise UserError(f"precision {precision!r} on Apple MPS is not supported here (unmeasured, and "
                            "autocast there can silently fall back to fp32); use precision 'auto' or 'fp32'")
        return precision  # fp16 on CPU works (GradScaler("cpu")) but is slow: for tests and checks
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
    if device.type == "mps":
        return "fp32"
    return "bf16" if (cpu_native_bf16() if cpu_bf16 is None else cpu_bf16) else "fp32"


def autocast(device: torch.device, precision: str):
    """Autocast to bf16 or fp16 on `device`; fp32 is a no-op context."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def make_scaler(device: torch.device, precision: str):
    """A GradScaler for fp16 (gradients would underflow without one); disabled otherwise."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))


def configure_backends(device: torch.device):
    """Backend switches for a run on `device`, set when the run starts (never at import).

    CUDA: cuDNN autotuning. Every shape in a run is fixed (training drops the last partial batch),
    so each conv's kernel search is paid once, in the first steps. It also makes CUDA runs, and
    resumed runs, not bit-identical: the fastest kernel may differ between runs, and some are
    nondeterministic (docs/devices.md). CPU runs are unaffected.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def reset_peak_memory(device: torch.device):
    """Start counting the accelerator's peak memory afresh (CUDA; nothing elsewhere)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """The accelerator memory a run held at its peak, in MB (tensors allocated by torch), since
    reset_peak_memory; None off CUDA (a CPU run's peak is the process RSS; MPS keeps no peak)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return None


def resolve_channels_last(channels_last: bool, device: torch.device) -> bool:
    """The memory layout a run uses: as the recipe asks (NHWC is ~1.3x faster on the project's CPU
    and what CUDA tensor cores prefer), except on Apple MPS, where it is unmeasured and NCHW is
    the backend's native layout."""
    return bool(channels_last) and device.type != "mps"


# "auto" compiles a CUDA run only when it takes at least this many optimizer steps. The compile
# (forward, backward and eval graphs: about a minute on Colab's 2 vCPUs, by the usual inductor
# times for nets this size) pays back only over many short steps, where launch overhead rules:
# `seed` and `long` (7,000+ steps) compile, `fast` and `best` (under 800) do not. An estimate,
# not yet measured on a GPU: scripts/gpu_check.sh times the on/off pair with the compile included.
COMPILE_MIN_STEPS = 2000


def resolve_compile(mode: str, device: torch.device, steps: int | None = None) -> str:
    """torch.compile mode for a run of `steps` optimizer steps: "auto" compiles on CUDA only
    (measured slower on the project's CPU: docs/devices.md), and only for runs of at least
    COMPILE_MIN_STEPS steps (None: unknown, counts as long); "off" never; a mode name always."""
    if mode == "auto":
        return "default" if device.type == "cuda" and (steps is None or steps >= COMPILE_MIN_STEPS) else "off"
    return mode


def needs_warm_up(device: torch.device) -> bool:
    """Whether an uncompiled run runs its graphs once before the clock starts (helpers.loop.warm_up; a
    compiled run always does). On an accelerator, yes: its first use of each shape costs seconds (cuDNN
    autotuning, lazy kernel loading: 6-11 s of `fast` on an H200, docs/devices.md). On the CPU, no: the
    airbench93 reference (scripts/reference_airbench93.py) starts cold there too, so times compare like
    for like."""
    return device.type != "cpu"


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (NaN where unknown, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
