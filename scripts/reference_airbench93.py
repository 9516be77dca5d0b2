"""The reference: airbench93's published recipe, run unchanged on this project's data and device.

A measurement script, not part of the package: it imports `airbench` (PyPI) from a scratch
environment and replays airbench93's training loop with its own hyperparameter table, network and
helpers. Only the few CUDA lines change: the model stays in fp32 on the CPU under bf16 autocast,
timing uses perf_counter, and the data is any ImageFolder-style split
decoded by `helpers.data` instead of torchvision's CIFAR-10 download.

    pip download airbench --no-deps -d /tmp/ab && tar xzf /tmp/ab/airbench-0.1.8.tar.gz -C /tmp/ab
    PYTHONPATH=/tmp/ab/airbench-0.1.8 .venv/bin/python scripts/reference_airbench93.py \
        --data-dir ../shared/data/cifar10-jpeg-dev --seed 0

Prints one JSON line, in the benchmark's spirit: train_seconds (whitening init + training, as
airbench counts it, without evaluation), test_acc without TTA, tta_acc with its TTA (level 2).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from math import ceil
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.data import load_splits  # noqa: E402
from helpers.device import describe  # noqa: E402

try:
    from airbench import lib_airbench93 as ab
    from airbench import utils as abu
except ImportError:
    sys.exit("error: airbench is not importable: pip install airbench into a scratch environment "
             "(or unpack its sdist and put the folder on PYTHONPATH); never into this project's .venv")


class Split:
    """What airbench's loader and evaluate() read: uint8 images as float NCHW in [0, 1], labels."""

    def __init__(self, ds, batch_size, aug=None, altflip=False, train=True):
        self.images = (ds.images.float() / 255).contiguous(memory_format=torch.channels_last)
        self.labels = ds.labels
        self.normalize = _normalize  # airbench.utils.infer calls loader.normalize(loader.images)
        self.batch_size, self.aug, self.altflip, self.train, self.epoch = batch_size, aug or {}, altflip, train, 0
        self.proc = {}

    def __len__(self):
        return len(self.images) // self.batch_size if self.train else ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        # airbench's CifarLoader.__iter__, step for step (pre-flip once, pre-pad, crop, alternate flip)
        if self.epoch == 0:
            images = self.proc["norm"] = _normalize(self.images)
            if self.aug.get("flip"):
                images = self.proc["flip"] = abu.batch_flip_lr(images)
            if self.aug.get("translate", 0) > 0:
                self.proc["pad"] = torch.nn.functional.pad(images, (self.aug["translate"],) * 4, "reflect")
        if self.aug.get("translate", 0) > 0:
            images = abu.batch_crop(self.proc["pad"], self.images.shape[-2])
        elif self.aug.get("flip"):
            images = self.proc["flip"]
        else:
            images = self.proc["norm"]
        if self.aug.get("flip"):
            if not self.altflip:
                images = abu.batch_flip_lr(images)
            elif self.epoch % 2 == 1:
                images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(images)) if self.train else torch.arange(len(images))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[idx], self.labels[idx]


def _normalize(x):
    mean, std = abu.CIFAR_MEAN.view(1, 3, 1, 1), abu.CIFAR_STD.view(1, 3, 1, 1)
    return (x - mean) / std


def make_net(widths, bn_momentum, scale):
    # make_net93 without .half().cuda(): the same layers, in fp32 (autocast does bf16)
    k = 2
    net = nn.Sequential(
        ab.Conv(3, 2 * 3 * k ** 2, k, padding=0, bias=True), nn.GELU(),
        ab.ConvGroup(2 * 3 * k ** 2, widths["block1"], bn_momentum),
        ab.ConvGroup(widths["block1"], widths["block2"], bn_momentum),
        ab.ConvGroup(widths["block2"], widths["block3"], bn_momentum),
        nn.MaxPool2d(3), ab.Flatten(), nn.Linear(widths["block3"], 10, bias=False), ab.Mul(scale))
    net[0].weight.requires_grad = False
    return net.to(memory_format=torch.channels_last)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/reference_airbench93.py", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=ab.hyp["opt"]["train_epochs"])
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    o, n = ab.hyp["opt"], ab.hyp["net"]
    train_ds, test_ds = load_splits("folder", args.data_dir, log=None)
    train_loader = Split(train_ds, o["batch_size"], aug=ab.hyp["aug"], altflip=True)
    test_loader = Split(test_ds, 2000, train=False)
    dtype = torch.bfloat16

    # --- from here on, airbench.utils.train with its CUDA lines swapped
    batch_size, momentum = o["batch_size"], o["momentum"]
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = o["lr"] / kilostep_scale
    wd = o["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * o["bias_scaler"]
    loss_fn = nn.CrossEntropyLoss(label_smoothing=o["label_smoothing"], reduction="none")
    total_train_steps = ceil(len(train_loader) * args.epochs)
    model = make_net(n["widths"], n["batchnorm_momentum"], n["scaling_factor"])
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    other = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                                 dict(params=other, lr=lr, weight_decay=wd / lr)], momentum=momentum, nesterov=True)
    xp = [0, int(0.23 * total_train_steps), total_train_steps]
    # airbench's triangle(): 0.2 -> 1 at 23 % of the steps -> 0.07 at the end, one value per step
    sched = torch.cat([torch.linspace(0.2, 1, xp[1] - xp[0] + 1)[:-1], torch.linspace(1, 0.07, xp[2] - xp[1] + 1)])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: sched[min(i, len(sched) - 1)].item())
    alpha = 0.95 ** 5 * (torch.arange(total_train_steps + 1) / total_train_steps) ** 3
    lookahead = abu.LookaheadState(model)

    t0 = time.perf_counter()
    abu.init_whitening_conv(model[0], _normalize(train_loader.images[:5000]))
    seconds, steps, per_epoch = time.perf_counter() - t0, 0, []
    for epoch in range(ceil(args.epochs)):
        model[0].bias.requires_grad = epoch < o["whiten_bias_epochs"]
        t0 = time.perf_counter()
        model.train()
        for x, y in train_loader:
            with torch.autocast("cpu", dtype):
                out = model(x)
            loss = loss_fn(out.float(), y).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps += 1
            if steps % 5 == 0:
                lookahead.update(model, decay=alpha[steps].item())
            if steps >= total_train_steps:
                lookahead.update(model, decay=1.0)
                break
        seconds += time.perf_counter() - t0
        per_epoch.append(round(_evaluate(model, test_loader, 0, dtype), 4))
        print(f"epoch {epoch + 1}: {per_epoch[-1]:.4f} after {seconds:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    tta = _evaluate(model, test_loader, n["tta_level"], dtype)
    print(json.dumps(dict(reference="airbench93 (PyPI airbench 0.1.8, recipe unchanged)",
                          params=sum(p.numel() for p in model.parameters()), epochs=args.epochs,
                          seed=args.seed, train_seconds=round(seconds, 2), test_acc=per_epoch[-1],
                          tta_acc=round(tta, 4), tta_seconds=round(time.perf_counter() - t0, 2),
                          precision="bf16", device=describe(torch.device("cpu")),
                          data=f"folder:{Path(args.data_dir).name}", acc_per_epoch=per_epoch)))


def _evaluate(model, loader, level, dtype):
    with torch.autocast("cpu", dtype):
        logits = abu.infer(model, loader, tta_level=level)
    return (logits.argmax(1) == loader.labels).float().mean().item()


if __name__ == "__main__":
    main()
