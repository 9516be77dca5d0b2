"""Device and precision defaults (helpers/device.py), fp16 with a GradScaler (torch.compile: test_loop.py).

Everything here runs on a CPU: the CUDA and MPS rows of the precision table are checked by
faking what torch reports, and fp16 runs through CPU autocast with GradScaler("cpu").
"""
import json

import pytest
import torch
import torch.nn as nn

from conftest import SMALL, outcome
from helpers import device as D
from helpers.checkpoint import CHECKPOINT, CheckpointError
from helpers.errors import UserError
from helpers.device import peak_rss_mb
from helpers.loop import StepHooks, make_optimizer, train_one_epoch
from helpers.record import Record, load_run
from helpers.run import Trial, train
from helpers.train import main as train_main
from helpers.recipes import RECIPES, Settings, get_recipe
from helpers.schedule import schedule

FP16 = {**SMALL, "model": "fast", "precision": "fp16"}  # CPU fp16 is slow: the small model
CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


# --------------------------------------------------------------------------- devices

def test_auto_device_is_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_mps_available", lambda: False)
    assert D.pick_device("auto", log=None) == CPU
    monkeypatch.setattr(D, "_mps_available", lambda: True)
    assert D.pick_device("auto", log=None) == MPS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert D.pick_device("auto", log=None).type == "cuda"


@pytest.mark.parametrize("name, message", [
    ("gpu", "unknown device 'gpu'; use auto"),
    ("cuda:x", "unknown device"),
    ("tpu", "unknown device"),
    ("cuda", "no CUDA GPU"),
    ("cuda:1", "no CUDA GPU"),
    ("mps", "MPS backend is not available"),
])
def test_missing_or_unknown_device_is_one_clear_error(name, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_mps_available", lambda: False)
    with pytest.raises(UserError, match=message):
        D.pick_device(name, log=None)


@pytest.mark.parametrize("flag", ["gpu", "mps"])
def test_cli_reports_a_missing_device_in_one_line(flag, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(D, "_mps_available", lambda: False)
    if flag == "gpu" or not torch.backends.mps.is_available():
        rc = train_main(["--data", "synthetic", "--device", flag, "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "device" in err[0]


# --------------------------------------------------------------------------- precision

@pytest.mark.parametrize("device, capability, cpu_bf16, expected", [
    (CUDA, (8, 0), None, "bf16"),     # A100
    (CUDA, (9, 0), None, "bf16"),     # H100
    (CUDA, (8, 9), None, "bf16"),     # L4
    (CUDA, (7, 5), None, "fp16"),     # T4: no bf16 tensor cores
    (CUDA, (7, 0), None, "fp16"),     # V100
    (CUDA, (6, 0), None, "fp16"),     # P100
    (CPU, None, True, "bf16"),        # AVX-512 bf16 / AMX
    (CPU, None, False, "fp32"),       # most laptops, Colab's CPU runtime
    (MPS, None, None, "fp32"),
])
def test_auto_precision_table(device, capability, cpu_bf16, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    assert D.resolve_precision("auto", device, cpu_bf16=cpu_bf16) == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_explicit_precision_always_wins(precision, monkeypatch):
    """On CPU and CUDA; MPS takes fp32 only (test_mps_refuses_autocast_precisions_in_one_line)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    for device in (CPU, CUDA):
        assert D.resolve_precision(precision, device, cpu_bf16=True) == precision


def test_cpu_bf16_check_respects_older_instruction_set_caps(monkeypatch):
    # the env vars that emulate an older CPU don't change the CPU flags, so the check reads them
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert D.cpu_native_bf16()
    for cap in ("AVX2", "AVX512_CORE", "avx512_core_vnni"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert not D.cpu_native_bf16(), cap
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert D.cpu_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not D.cpu_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not D.cpu_native_bf16()


def test_every_recipe_defaults_to_auto_and_runs_store_the_resolved_value(tmp_path):
    assert Settings().precision == "auto" and Settings().compile == "auto"
    for name in RECIPES:  # no recipe carries a per-device setting: those are Settings'
        assert not {"precision", "compile", "channels_last", "device"} & set(get_recipe(name).to_dict())
    record = train(out_dir=tmp_path / "run", **SMALL)
    expected = D.resolve_precision("auto", CPU)
    assert record.config["settings"]["precision"] == expected
    assert record.config["settings"]["compile"] == "off"   # auto compiles on CUDA only
    saved = Record.load(tmp_path / "run").config["settings"]
    assert saved["precision"] == expected and saved["compile"] == "off"
    # a resume resolves "auto" the same way, so it matches the stored run
    assert outcome(train(out_dir=tmp_path / "run", resume=True, **SMALL)) == outcome(record)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                              ("fp32", torch.float32)])
def test_autocast_runs_convs_in_the_asked_dtype(precision, dtype):
    seen = []
    conv = nn.Conv2d(3, 4, 3)
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with D.autocast(CPU, precision):
        conv(torch.randn(2, 3, 8, 8))
    assert seen == [dtype]


# --------------------------------------------------------------------------- fp16 + GradScaler

def test_fp16_trains_with_a_grad_scaler_and_resumes_exactly(tmp_path):
    straight = train(out_dir=tmp_path / "a", **FP16)
    assert straight.history[-1]["train_loss"] < straight.history[0]["train_loss"] * 1.5
    ckpt = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
    assert ckpt["config"]["settings"]["precision"] == "fp16"
    Trial(out_dir=tmp_path / "b", **FP16).run(stop_after=1)
    resumed = Trial(out_dir=tmp_path / "b", **FP16).run(resume=True)
    assert outcome(resumed) == outcome(straight)
    # the scale a run had reached is restored with it
    ckpt["scaler"]["scale"] = 1024.0
    torch.save(ckpt, tmp_path / "a" / CHECKPOINT)
    trainer = Trial(out_dir=tmp_path / "a", **FP16).setup()
    trainer.load(tmp_path / "a" / CHECKPOINT)
    assert trainer.scaler.get_scale() == 1024.0


def test_scaler_skips_a_step_whose_gradients_overflow():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LogSoftmax(1))
    recipe = get_recipe("seed")
    opt = make_optimizer(model, recipe)
    asked = []
    rates = schedule(recipe, steps_per_epoch=2)
    scaler = D.make_scaler(CPU, "fp16")
    assert scaler.is_enabled() and not D.make_scaler(CPU, "bf16").is_enabled()
    before = [p.detach().clone() for p in model.parameters()]
    model[0].weight.register_hook(lambda g: g * float("inf"))  # overflow on every step
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))] * 2
    scale0 = scaler.get_scale()
    stats = train_one_epoch(model, batches, opt, lambda step: asked.append(step) or rates(step), recipe,
                            hooks=StepHooks(precision="fp16", scaler=scaler))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # steps skipped
    assert scaler.get_scale() < scale0                                          # scale lowered
    assert asked == [0, 1] and stats["lr"] == rates(1).lr  # a skipped step still advances the schedule


def test_peak_memory_is_the_gpu_own_on_cuda_and_none_elsewhere(monkeypatch):
    resets = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: resets.append(d))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2 ** 20)
    D.reset_peak_memory(CUDA)
    D.reset_peak_memory(CPU)
    assert resets == [CUDA]
    assert D.peak_memory_mb(CUDA) == 3.0 and D.peak_memory_mb(CPU) is None and D.peak_memory_mb(MPS) is None


@pytest.mark.parametrize("platform, maxrss, mb", [("linux", 2048 * 1024, 2048.0), ("darwin", 3 * 2 ** 20, 3.0)])
def test_peak_rss_reads_kib_on_linux_and_bytes_on_macos(platform, maxrss, mb, monkeypatch):
    import sys
    import types
    fake = types.SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: types.SimpleNamespace(ru_maxrss=maxrss))
    monkeypatch.setitem(sys.modules, "resource", fake)
    monkeypatch.setattr(sys, "platform", platform)
    assert peak_rss_mb() == mb


def test_the_package_imports_without_resource_as_on_windows():
    import math
    import subprocess
    import sys
    code = ("import sys; sys.modules['resource'] = None  # what Windows has: no such module\n"
            "import helpers.train, helpers.benchmark, helpers.pipeline, helpers.device\n"
            "print(helpers.device.peak_rss_mb())")
    from pathlib import Path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1]).stdout
    assert math.isnan(float(out))


def test_cudnn_autotuning_is_switched_on_for_cuda_runs_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    D.configure_backends(CPU)
    assert torch.backends.cudnn.benchmark is False
    D.configure_backends(CUDA)
    assert torch.backends.cudnn.benchmark is True


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mps_refuses_autocast_precisions_in_one_line(precision):
    with pytest.raises(UserError, match="use precision 'auto' or 'fp32'"):
        D.resolve_precision(precision, MPS)
    assert D.resolve_precision("fp32", MPS) == "fp32" and D.resolve_precision("auto", MPS) == "fp32"


def test_channels_last_is_resolved_per_device():
    assert D.resolve_channels_last(True, CPU) and D.resolve_channels_last(True, CUDA)
    assert not D.resolve_channels_last(True, MPS) and not D.resolve_channels_last(False, CUDA)


@pytest.mark.parametrize("steps, expected", [(None, "default"), (D.COMPILE_MIN_STEPS, "default"),
                                             (D.COMPILE_MIN_STEPS - 1, "off")])
def test_auto_compile_needs_a_long_cuda_run(steps, expected):
    assert D.resolve_compile("auto", CUDA, steps) == expected
    assert D.resolve_compile("auto", CPU, steps) == "off"
    assert D.resolve_compile("max-autotune", CPU, 10) == "max-autotune"


def test_recipes_compile_by_their_length_on_cuda():
    """fast and best are over in a few hundred steps: no compile; seed and long take thousands."""
    steps = {name: r.epochs * (45_000 // r.batch_size) for name, r in RECIPES.items()}
    compiled = {n for n, s in steps.items() if D.resolve_compile("auto", CUDA, s) != "off"}
    assert compiled == {n for n, s in steps.items() if s >= D.COMPILE_MIN_STEPS}
    assert {"seed", "long"} <= compiled and not {"fast", "best"} & compiled


def test_resume_re_resolves_an_auto_precision_on_another_device(tmp_path, monkeypatch, capsys):
    """A Colab reconnect can land on another GPU type, or a CPU: an 'auto' run continues, saying so."""
    run = dict(SMALL, model="fast", out_dir=tmp_path / "run")
    real = D.resolve_precision
    monkeypatch.setattr("helpers.run.resolve_precision", lambda p, d: "fp16" if p == "auto" else real(p, d))
    Trial(**{**run, "epochs": 2}).run(stop_after=1)   # epoch 1 "on a T4": fp16
    monkeypatch.setattr("helpers.run.resolve_precision", lambda p, d: "fp32" if p == "auto" else real(p, d))
    record = Trial(**{**run, "epochs": 2}).run(resume=True)
    assert len(record.history) == 2 and record.config["settings"]["precision"] == "fp32"
    assert "epochs 1-1 trained in fp16" in capsys.readouterr().out
    # a precision chosen by hand still has to match
    with pytest.raises(CheckpointError, match="precision: checkpoint 'fp32', now 'bf16'"):
        Trial(**{**run, "epochs": 2, "precision": "bf16"}).run(resume=True)


# --------------------------------------------------------------------------- warm-up

def test_only_accelerators_warm_up_uncompiled_runs():
    from helpers.device import needs_warm_up
    assert not needs_warm_up(torch.device("cpu"))
    assert needs_warm_up(torch.device("cuda")) and needs_warm_up(torch.device("mps"))


# --------------------------------------------------------------------------- on real accelerators
# These need the hardware itself; scripts/gpu_check.sh runs them on a CUDA machine.

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
needs_mps = pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs Apple MPS")


@needs_cuda
def test_cuda_auto_precision_and_compile_train_and_load_on_cpu(tmp_path):
    # compile asked for: auto would leave a run this short uncompiled (test_auto_compile_needs_a_long_cuda_run)
    record = train(out_dir=tmp_path / "run", **{**SMALL, "device": "cuda", "model": "fast", "compile": "default"})
    expected = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"
    assert record.config["settings"]["precision"] == expected
    assert record.config["settings"]["compile"] == "default" and record.config["compile_seconds"] > 0
    assert record.history[-1]["train_loss"] < record.history[0]["train_loss"] * 1.5
    model, _, _ = load_run(tmp_path / "run", device="cpu")  # a GPU checkpoint analysed on a CPU
    assert next(model.parameters()).device.type == "cpu"


@needs_cuda
def test_cuda_fp16_scaler_state_is_checkpointed(tmp_path):
    train(out_dir=tmp_path / "run", **{**SMALL, "device": "cuda", "model": "fast", "precision": "fp16",
                                         "compile": "off"})
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["scaler"]["scale"] > 0


@needs_cuda
def test_cuda_resume_across_precisions_and_peak_memory(tmp_path, monkeypatch, capsys):
    """Epoch 1 as on a T4 (auto = fp16 with a GradScaler), epoch 2 on this GPU's own auto."""
    from helpers import benchmark
    run = {**SMALL, "device": "cuda", "model": "fast", "compile": "off", "out_dir": tmp_path / "run"}
    real = D.resolve_precision
    with monkeypatch.context() as m:
        m.setattr("helpers.run.resolve_precision", lambda p, d: "fp16" if p == "auto" else real(p, d))
        Trial(**run).run(stop_after=1)
    record = Trial(**run).run(resume=True)
    assert len(record.history) == 2 and record.config["settings"]["precision"] == real("auto", torch.device("cuda"))
    assert "epochs 1-1 trained in fp16" in capsys.readouterr().out
    assert benchmark.main(["--data", "synthetic", "--limit", "200", "--epochs", "1", "--batch-size", "50",
                           "--recipe", "fast", "--device", "cuda"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert 0 < row["peak_device_mb"] < torch.cuda.get_device_properties(0).total_memory / 2 ** 20


@needs_mps
def test_mps_trains_in_fp32(tmp_path):
    record = train(**{**SMALL, "device": "mps", "model": "fast"})
    assert record.config["settings"]["precision"] == "fp32"
