"""Device and precision defaults (helpers/device.py), fp16 with a GradScaler, torch.compile.

Everything here runs on a CPU: the CUDA and MPS rows of the precision table are checked by
faking what torch reports, and fp16 runs through CPU autocast with GradScaler("cpu").
"""
import pytest
import torch
import torch.nn as nn

from helpers import device as D
from helpers import train as T
from helpers.recipes import RECIPES, get_recipe

SMALL = dict(data="synthetic", limit=120, device="cpu", progress=False, batch_size=40, epochs=2)
FP16 = {**SMALL, "model": "fast", "precision": "fp16"}  # CPU fp16 is slow: the small model


def outcome(record):
    """A history without its timings and memory, which differ between identical runs."""
    return [{k: v for k, v in h.items() if not k.endswith("seconds") and k != "peak_rss_mb"} for h in record.history]
CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


# --------------------------------------------------------------------------- devices

def test_auto_device_is_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_mps_available", lambda: False)
    assert D.pick_device("auto", verbose=False) == CPU
    monkeypatch.setattr(D, "_mps_available", lambda: True)
    assert D.pick_device("auto", verbose=False) == MPS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert D.pick_device("auto", verbose=False).type == "cuda"


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
    with pytest.raises(ValueError, match=message):
        D.pick_device(name, verbose=False)


@pytest.mark.parametrize("flag", ["gpu", "mps"])
def test_cli_reports_a_missing_device_in_one_line(flag, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(D, "_mps_available", lambda: False)
    if flag == "gpu" or not torch.backends.mps.is_available():
        rc = T.main(["--data", "synthetic", "--device", flag, "--out", str(tmp_path / "r")])
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
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    for device in (CPU, CUDA, MPS):
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
    for name in RECIPES:
        assert get_recipe(name).precision == "auto" and get_recipe(name).compile == "auto"
    record = T.train(out_dir=tmp_path / "run", **SMALL)
    expected = D.resolve_precision("auto", CPU)
    assert record.config["recipe"]["precision"] == expected
    assert record.config["recipe"]["compile"] == "off"   # auto compiles on CUDA only
    saved = T.Record.load(tmp_path / "run").config["recipe"]
    assert saved["precision"] == expected and saved["compile"] == "off"
    # a resume resolves "auto" the same way, so it matches the stored run
    assert outcome(T.train(out_dir=tmp_path / "run", resume=True, **SMALL)) == outcome(record)


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
    straight = T.train(out_dir=tmp_path / "a", **FP16)
    assert straight.history[-1]["train_loss"] < straight.history[0]["train_loss"] * 1.5
    ckpt = torch.load(tmp_path / "a" / T.CHECKPOINT, weights_only=True)
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
    assert ckpt["config"]["recipe"]["precision"] == "fp16"
    T.Trial(out_dir=tmp_path / "b", **FP16).run(stop_after=1)
    resumed = T.Trial(out_dir=tmp_path / "b", **FP16).run(resume=True)
    assert outcome(resumed) == outcome(straight)
    # the scale a run had reached is restored with it
    ckpt["scaler"]["scale"] = 1024.0
    torch.save(ckpt, tmp_path / "a" / T.CHECKPOINT)
    trainer = T.Trial(out_dir=tmp_path / "a", **FP16).setup()
    trainer.load(tmp_path / "a" / T.CHECKPOINT)
    assert trainer.scaler.get_scale() == 1024.0


def test_scaler_skips_a_step_whose_gradients_overflow():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LogSoftmax(1))
    recipe = get_recipe("seed", precision="fp16")
    opt = T.make_optimizer(model, recipe)
    sched = T.make_scheduler(opt, recipe, steps_per_epoch=1)
    scaler = D.make_scaler(CPU, "fp16")
    assert scaler.is_enabled() and not D.make_scaler(CPU, "bf16").is_enabled()
    before = [p.detach().clone() for p in model.parameters()]
    model[0].weight.register_hook(lambda g: g * float("inf"))  # overflow on every step
    batch = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))]
    scale0 = scaler.get_scale()
    with pytest.warns(UserWarning, match="lr_scheduler.step"):  # torch notes the skipped optimizer step
        T.train_one_epoch(model, batch, opt, sched, recipe, CPU, scaler=scaler)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # step skipped
    assert scaler.get_scale() < scale0                                          # scale lowered


# --------------------------------------------------------------------------- torch.compile

@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the eager backend: the same code path, none of inductor's C++ build time."""
    calls = []
    original = nn.Module.compile

    def compile(self, *args, **kwargs):
        calls.append(kwargs.pop("mode", None))
        return original(self, *args, backend="eager", **kwargs)

    monkeypatch.setattr(nn.Module, "compile", compile)
    return calls


def test_compiled_run_matches_uncompiled_and_checkpoints_load_either_way(tmp_path, eager_compile):
    plain = T.train(out_dir=tmp_path / "plain", compile="off", **SMALL)
    compiled = T.train(out_dir=tmp_path / "compiled", compile="default", **SMALL)
    assert eager_compile == ["default"]
    assert compiled.config["compile_seconds"] >= 0 and compiled.config["recipe"]["compile"] == "default"
    # the warm-up that compiles leaves weights, BatchNorm statistics and random state untouched
    assert outcome(compiled) == outcome(plain)
    # a compiled run's checkpoint loads into a plain model, and a plain one into a compiled model
    model, config, history = T.load_run(tmp_path / "compiled")
    assert len(history) == 2 and not hasattr(model, "_orig_mod")
    trial = T.Trial(out_dir=tmp_path / "plain", compile="default", **SMALL)
    trial.recipe = trial.recipe.override(compile="off")  # the recipe stored with the plain run
    trainer = trial.setup()
    trainer.model.compile(mode="default")
    trainer.load(tmp_path / "plain" / T.CHECKPOINT)
    assert trainer.epoch == 2


# --------------------------------------------------------------------------- on real accelerators
# These need the hardware itself; scripts/gpu_check.sh runs them on a CUDA machine.

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
needs_mps = pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs Apple MPS")


@needs_cuda
def test_cuda_auto_precision_and_compile_train_and_load_on_cpu(tmp_path):
    record = T.train(out_dir=tmp_path / "run", **{**SMALL, "device": "cuda", "model": "fast"})
    expected = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"
    assert record.config["recipe"]["precision"] == expected
    assert record.config["recipe"]["compile"] == "default" and record.config["compile_seconds"] > 0
    assert record.history[-1]["train_loss"] < record.history[0]["train_loss"] * 1.5
    model, _, _ = T.load_run(tmp_path / "run", device="cpu")  # a GPU checkpoint analysed on a CPU
    assert next(model.parameters()).device.type == "cpu"


@needs_cuda
def test_cuda_fp16_scaler_state_is_checkpointed(tmp_path):
    T.train(out_dir=tmp_path / "run", **{**SMALL, "device": "cuda", "model": "fast", "precision": "fp16",
                                         "compile": "off"})
    assert torch.load(tmp_path / "run" / T.CHECKPOINT, weights_only=True)["scaler"]["scale"] > 0


@needs_mps
def test_mps_trains_in_fp32(tmp_path):
    record = T.train(**{**SMALL, "device": "mps", "model": "fast"})
    assert record.config["recipe"]["precision"] == "fp32"
