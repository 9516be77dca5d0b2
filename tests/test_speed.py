"""helpers/speed.py: FLOPs per image, the device's measured peak, the per-phase stopwatch."""
import pytest
import torch
from torch import nn

from helpers import speed
from helpers.registry import build_model

CPU = torch.device("cpu")


def test_gflop_per_image_counts_forward_and_backward_per_image():
    # Linear 10 -> 5 without bias: 2*10*5 = 100 FLOPs forward per image; backward computes the weight's
    # gradient only (the input needs none): another 100
    assert speed.gflop_per_image(nn.Linear(10, 5, bias=False), image_size=(10,), batch=8) * 1e9 == pytest.approx(200)
    # the same count whatever the batch it is measured on
    net = build_model("fast")
    assert speed.gflop_per_image(net, batch=2) == pytest.approx(speed.gflop_per_image(net, batch=6), rel=1e-6)
    assert 0.05 < speed.gflop_per_image(net) < 0.2        # ~0.094 by flop_counter: wide enough for a retuned net
    assert speed.gflop_per_image(build_model("seed")) > 5 * speed.gflop_per_image(net)


def test_counting_leaves_the_model_untouched():
    net = build_model("fast")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    speed.gflop_per_image(net)
    assert not net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_peak_is_measured_here_and_says_how():
    peak = speed.peak_gflop_per_s(CPU, "fp32", seconds=0.05, size=128)
    assert peak["peak_gflop_per_s"] > 0
    assert peak["peak_source"].startswith("measured: 128x128 matmul in fp32")


def test_stopwatch_charges_each_phase_and_idle_does_nothing():
    watch = speed.Stopwatch(CPU)
    watch.start()
    torch.randn(200, 200) @ torch.randn(200, 200)
    watch.lap("forward")
    watch.lap("backward")
    watch.lap("forward")
    assert set(watch.seconds) == {"forward", "backward"} and watch.seconds["forward"] > 0
    table = watch.table()
    assert all(p in table for p in speed.PHASES) and "total" in table
    speed.IDLE.start()
    speed.IDLE.lap("forward")  # no state, no error


def test_a_profiled_epoch_accounts_for_its_time():
    from helpers.run import Trial

    trial = Trial(data="synthetic", limit=120, batch_size=40, epochs=1, progress=False, device="cpu")
    trainer = trial.setup()
    trainer.stopwatch = speed.Stopwatch(trainer.device)
    record = trial.run()
    phases = trainer.stopwatch.seconds
    assert {"data", "forward", "backward", "optimizer", "evaluation"} <= set(phases)
    train_phases = sum(phases[p] for p in ("data", "forward", "backward", "optimizer"))
    # the laps cover the epoch's training time (the rest is the loss bookkeeping between them)
    assert 0.5 * record.history[0]["train_seconds"] < train_phases <= record.history[0]["train_seconds"] + 0.05
