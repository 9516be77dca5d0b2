"""Figures for the notebooks. Every function returns its matplotlib Figure (save or show it).

Images come in as uint8 tensors (N, 3, 32, 32), the way the data module keeps them,
so nothing here needs to undo normalisation.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from .augment import from_recipe
from .data import ImageSet, channel_stats
from .errors import UserError
from .loader import Loader
from .recipes import recipe_name  # noqa: F401  (plots label runs by it; it lives with the recipes)


def _grid(n, ncols):
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.8 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def show_images(images, titles=None, ncols=8, suptitle=None, colors=None):
    """A grid of uint8 images with an optional title under each."""
    n = len(images)
    fig, axes = _grid(max(n, 1), ncols)
    for i, ax in zip(range(n), axes):
        ax.imshow(images[i].permute(1, 2, 0).cpu().numpy())  # (3, H, W) -> (H, W, 3)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7, color=colors[i] if colors else "black")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def class_grid(ds, per_class=8):
    """`per_class` sample images of every class, one row per class."""
    rows = []
    for c in range(len(ds.classes)):
        idx = (ds.labels == c).nonzero().flatten()[:per_class]
        rows.append(ds.images[idx])
    images = torch.cat(rows)
    titles = [ds.classes[c] if i % per_class == 0 else "" for c in range(len(ds.classes)) for i in range(per_class)]
    return show_images(images, titles, ncols=per_class)


def show_augmentations(ds, recipe, n=8, epochs=3):
    """First row: one training image of each of the first n classes; next rows: the same images as the
    training loader hands them to the network in epochs 1, 2, ... (the recipe's list of augmentations,
    augment.from_recipe: shifts, mirroring, cutout, random erasing; alternating flips mirror each image every
    other epoch), drawn by a Loader, so the figure is the training's augmentation, whatever the recipe."""
    firsts = [int((ds.labels == c).nonzero()[0]) for c in range(len(ds.classes)) if (ds.labels == c).any()][:n]
    n = len(firsts)
    sample = ImageSet(ds.images[firsts], ds.labels[firsts], ds.classes)
    mean, std = channel_stats(ds.images)
    loader = Loader(sample, n, True, mean, std, augmentations=from_recipe(recipe))
    rows, titles = [sample.images], [ds.classes[int(y)] for y in sample.labels]
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        x, y = next(iter(loader))   # shuffled: put each image back in its class's column
        x = (x * loader.std + loader.mean).round().clamp(0, 255).to(torch.uint8)
        rows.append(x[torch.argsort(y)] if len(set(y.tolist())) == n else x)
        titles += [f"epoch {epoch}"] * n
    return show_images(torch.cat(rows), titles, ncols=n)


def show_examples(examples, title="", n=25, ncols=5):
    """Classified test images: 'true / predicted (confidence)', red where wrong."""
    cls = examples["classes"]
    t, p, c = examples["true"][:n], examples["pred"][:n], examples["confidence"][:n]
    titles = [f"{cls[int(a)]} / {cls[int(b)]} ({float(q):.0%})" for a, b, q in zip(t, p, c)]
    colors = ["green" if a == b else "red" for a, b in zip(t, p)]
    return show_images(examples["images"][:n], titles, ncols, title + "\ntrue / predicted (confidence)", colors)


def run_label(record) -> str:
    """How plots name a run: its recipe and seed, e.g. "fast, seed 0"."""
    try:
        return f"{recipe_name(record.config['recipe'])}, seed {record.config['seed']}"
    except (KeyError, TypeError):  # a history without a stored config: its folder name
        return record.name


def _epoch_axis(ax, epochs):
    """Whole-number epoch ticks: every epoch for short runs (matplotlib would put 0.95 ... 1.05
    around a single epoch), at most ~10 integer ticks for long ones."""
    ax.set_xlabel("epoch")
    epochs = sorted(set(epochs))
    if len(epochs) <= 10:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))


def plot_curves(record):
    """Accuracy and loss per epoch, train vs test, for one run."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    name = run_label(record)
    epochs = record.series("epoch")
    a.plot(epochs, [100 * v for v in record.series("train_acc")], "o-", label="train")
    a.plot(epochs, [100 * v for v in record.series("test_acc")], "o-", label="test (plain)")
    if all("tta_acc" in h for h in record.history) and record.history:
        a.plot(epochs, [100 * v for v in record.series("tta_acc")], "o--", color="C1", alpha=0.5, label="test with TTA")
    if all("val_acc" in h for h in record.history) and record.history:   # a run that held out a validation split
        a.plot(epochs, [100 * v for v in record.series("val_acc")], "s-", color="C2", label="validation (plain)")
    a.axhline(80, color="gray", ls=":", label="80 % target")
    a.set(ylabel="accuracy (%)", title=f"{name}: accuracy")
    b.plot(epochs, record.series("train_loss"), "o-", label="train")
    b.plot(epochs, record.series("test_loss"), "o-", label="test")
    b.set(ylabel="loss", title=f"{name}: loss")
    for ax in (a, b):
        _epoch_axis(ax, epochs)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def summary_plot_for_runs(records, metric="acc"):
    """Train and test `metric` ("acc" or "loss") per epoch for several runs, side by side."""
    if metric not in ("acc", "loss"):
        raise UserError(f"metric must be 'acc' or 'loss', got {metric!r}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    scale = 100 if metric == "acc" else 1
    labels = [run_label(r) for r in records]
    labels = [f"{lab} [{r.name}]" if labels.count(lab) > 1 else lab for lab, r in zip(labels, records)]
    for split, ax in zip(("train", "test"), axes):
        for r, lab in zip(records, labels):
            ax.plot(r.series("epoch"), [scale * v for v in r.series(f"{split}_{metric}")], "o-", ms=3, label=lab)
        what = {"acc": "accuracy (%)", "loss": "loss"}[metric]
        ax.set(title=f"{split} {what}" + (" (plain)" if split == "test" else ""))
        _epoch_axis(ax, [e for r in records for e in r.series("epoch")])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(pred, true, num_classes):
    """(num_classes, num_classes) counts, rows = true class, columns = predicted."""
    return torch.bincount(true * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)


def plot_confusion(cm, classes):
    cm = cm.cpu()  # predictions made on a GPU: matplotlib reads host memory
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    frac = cm.float() / cm.sum(1, keepdim=True).clamp(min=1)
    im = ax.imshow(frac.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    fig.colorbar(im, ax=ax, label="fraction of true class")
    fig.tight_layout()
    return fig


def plot_per_class_accuracy(cm, classes):
    acc = (cm.diag().float() / cm.sum(1).clamp(min=1)).tolist()
    fig, ax = plt.subplots(figsize=(7, 3))
    bars = ax.bar(classes, [100 * a for a in acc])
    ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set(ylabel="accuracy (%)", title="per-class test accuracy (plain)", ylim=(0, 105))
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def grad_cam(model, x, layer):
    """Grad-CAM heat maps (N, H, W) in [0, 1] for the predicted class of each input.

    Weights `layer`'s activations by the spatial mean of their gradients, keeps the
    positive part and upsamples to the input size.
    """
    acts, grads = {}, {}
    h1 = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: grads.__setitem__("g", go[0]))
    try:
        model.eval()
        x = x.clone().requires_grad_(True)
        out = model(x)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
    finally:
        h1.remove()
        h2.remove()
    w = grads["g"].mean(dim=(2, 3), keepdim=True)                    # (N, C, 1, 1)
    cam = torch.relu((w * acts["a"]).sum(1, keepdim=True))            # (N, 1, h, w)
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.flatten(1).max(1).values.clamp(min=1e-8)[:, None, None]
    return cam.detach()


def gradcam_layer(model, min_size=7):
    """(name, module, (H, W)): where Grad-CAM looks. The last conv block (as the rule checker reads the
    graph) whose maps are at least `min_size` px, taken at the outermost module that holds that block's
    convs and nothing else: late enough to see objects, early enough that a heat map can say where. (On a
    3x3 map each heat cell covers a third of the image: every map would be a blob in the middle.)"""
    from .constraints import check

    report = check(model)
    ops, modules = report.ops, dict(model.named_modules())
    blocks = [s for s in report.stages if s.kind == "ConvBlock" and any(ops[i].kind == "conv" for i in s.ops)]
    wide = [s for s in blocks if max(ops[i].out_shape[1] for i in s.ops if ops[i].kind == "conv") >= min_size]
    if not blocks:
        raise UserError("the model runs no convolution: Grad-CAM has no map to look at")
    stage = (wide or blocks)[-1]
    convs = [ops[i] for i in stage.ops if ops[i].kind == "conv" and ops[i].out_shape[1] >= min(min_size, 2)]
    last = convs[-1] if convs else ops[stage.ops[-1]]
    inside = {ops[i].module for i in stage.ops}
    others = {o.module for o in ops} - inside
    parts = last.module.split(".")
    for k in range(1, len(parts) + 1):  # outermost first: the whole block, not one conv of it
        name = ".".join(parts[:k])
        if not any(m == name or m.startswith(name + ".") for m in others):
            return name, modules[name], tuple(last.out_shape[1:])
    return last.module, modules[last.module], tuple(last.out_shape[1:])


def show_grad_cam(images, cams, titles, ncols=3):
    """Each image beside its Grad-CAM heat map laid over it (ncols pairs per row)."""
    fig, axes = _grid(2 * len(images), 2 * ncols)
    axes = list(axes)
    for i, (img, cam, t) in enumerate(zip(images, cams, titles)):
        img, cam = img.detach().cpu(), cam.detach().cpu()  # grad_cam runs where the model is
        left, right = axes[2 * i], axes[2 * i + 1]
        left.imshow(img.permute(1, 2, 0).numpy())
        left.set_title(t, fontsize=7)
        right.imshow(img.permute(1, 2, 0).numpy())
        right.imshow(cam.numpy(), cmap="jet", alpha=0.45)
        right.set_title("Grad-CAM", fontsize=7)
    fig.tight_layout()
    return fig


def plot_schedule(schedule: dict):
    """The learning rate (both parameter groups) and the momentum at every step, epochs marked:
    `schedule` from helpers.schedule.lr_schedule."""
    steps = schedule["steps_per_epoch"]
    # epochs trained after each step: x = 1 is the end of epoch 1, where the training curves put epoch 1
    x = [(i + 1) / steps for i in range(len(schedule["lr"]))]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3))
    a.plot(x, schedule["lr"], label="weights")
    if schedule["bias_lr"] != schedule["lr"]:
        a.plot(x, schedule["bias_lr"], "--", label="BatchNorm and biases")
        a.set_yscale("log")
        a.legend()
    a.set(ylabel="learning rate", title="learning rate per step")
    b.plot(x, schedule["momentum"], color="C2")
    b.set(ylabel="momentum", title="momentum per step")
    for ax in (a, b):
        ax.set_xlabel("epochs trained (1 = the end of epoch 1)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0, len(x) / steps)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save(fig, path, dpi=90):
    """Save a figure (creating its folder) at a fixed size, so reruns give comparable files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path

