"""The numbers a notebook shows, read out in words: what a student would otherwise take for a bug.

Each function takes what the notebook already has (a rule report, a run's Record, a confusion matrix) and
returns plain text computed from it, so the prose always describes the run above it:

    print(explain_architecture(net, report))   # 02: map sizes, where the required layers sit, the receptive field
    print(explain_recipe(recipe, settings, ...))  # 03: the recipe as the run will use it, one line per ingredient
    print(explain_history(record))             # 03: small first epochs, train loss above test loss
    print(explain_errors(cm, classes))         # 04: the worst class, the confusions that dominate
"""
from __future__ import annotations

import math

import torch

from .augment import from_recipe
from .loop import image_sizes
from .model import PatchWhitening
from .recipes import Recipe, Settings
from .schedule import describe


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


# --------------------------------------------------------------------------- 02: the network

def explain_architecture(model, report) -> str:
    """Why the maps have the sizes they have, where the rule-required layers sit and what they cost there,
    and what a receptive field larger than the image means. `report`: constraints.check(model)."""
    ops, lines = report.ops, []
    size, path = 32, ["32"]
    why = []
    for op in ops:
        h = op.out_shape[1]
        if h == size:
            continue
        if op.kind == "conv":
            why.append(f"{op.name}, a {op.kernel}x{op.kernel} conv with padding {op.padding}, takes the map from "
                       f"{size} to {h} px")
        elif op.kind == "maxpool":
            why.append(f"{op.name} halves it" + (", rounding down" if size % 2 else ""))
        elif h == 1:
            why.append(f"{op.name} averages each map to one number" if op.kind == "avgpool" else
                       f"{op.name} keeps one number per map")
        path.append(str(h))
        size = h
    lines.append(f"Map sizes: {' -> '.join(path)} px. " + "; ".join(why) + ".")
    whitening = [n for n, m in model.named_modules() if isinstance(m, PatchWhitening)]
    if whitening:
        lines.append(f"{whitening[0]} is a PatchWhitening layer: fixed 2x2 filters computed from the training images "
                     "before training (the directions of the patches' covariance, scaled to unit variance, each with "
                     "both signs), so the layers after it see decorrelated inputs and learn faster; its weights never "
                     "train.")
    dilated = [o for o in ops if o.kind == "conv" and o.dilation > 1 and o.kernel > 1]
    if dilated:
        d = dilated[0]
        span = d.dilation * (d.kernel - 1) + 1
        lines.append(f"The dilated conv ({d.name}, dilation {d.dilation}) runs on {_hw(d.out_shape)} maps: its "
                     f"{d.kernel}x{d.kernel} kernel spans {span}x{span} pixels, a wider view for the weights and the "
                     f"cost of a plain {d.kernel}x{d.kernel}.{_where_cheap(d)}")
    if report.separable:
        dw, pw = ops[report.separable[0][0]], ops[report.separable[0][1]]
        separate = dw.kernel ** 2 * dw.out_channels + dw.out_channels * pw.out_channels
        full = dw.in_channels * pw.out_channels * dw.kernel ** 2
        lines.append(f"The depthwise-separable pair ({dw.name} -> {pw.name}) runs on {_hw(dw.out_shape)} maps: a "
                     f"{dw.kernel}x{dw.kernel} filter per channel, then a 1x1 conv that mixes the channels, "
                     f"{separate:,} weights where a full {dw.kernel}x{dw.kernel} conv would have {full:,} "
                     f"({full / separate:.1f}x as many).{_where_cheap(dw)}")
    rf = report.final_receptive_field
    if rf > 32:
        lines.append(f"Receptive field {rf} px, more than the 32 px image: the last layer's units can be reached by "
                     "every pixel (padding stands in beyond the edges). It says how far apart two pixels may be and "
                     "still meet in one feature, not how much of the image a unit uses: in practice the weight falls "
                     "off quickly from the centre.")
    else:
        lines.append(f"Receptive field {rf} px of a 32 px image: a unit of the last layer sees a {rf}x{rf} window, "
                     "not the whole image, until the global pooling averages them.")
    return "\n".join(lines)


def _hw(shape) -> str:
    return f"{shape[1]}x{shape[2]}"


def _where_cheap(op) -> str:
    pixels = op.out_shape[1] * op.out_shape[2]
    if pixels >= 16 * 16:
        return ""
    # a conv costs the same per pixel wherever it runs, so a layer the rules require is cheapest on small maps
    return f" On {pixels} pixels, {1024 // pixels}x fewer than the image's, a layer costs little."


# --------------------------------------------------------------------------- 03: the training

def explain_recipe(recipe: Recipe, settings: Settings, model, param_groups, steps_per_epoch: int, image_size: int,
                   output: str = "output") -> str:
    """The training recipe as a run will use it, one line per ingredient. `param_groups`: the optimizer's
    (helpers.loop.make_optimizer: the weights, then the rest); `image_size`: the training images' full height;
    `output`: what the network returns ("logits", "log-probabilities"; helpers.probe.check_network). Given the
    run's own values (helpers.run.recipe_table reads them off a Trainer), it cannot disagree with what trains."""
    r, s, groups, steps, full = recipe, settings, param_groups, steps_per_epoch, image_size

    def group(g):
        return f"{len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} values"

    momentum = (f"{r.momentum:g}, constant" if r.momentum == r.momentum_max else
                f"{r.momentum_max:g} -> {r.momentum:g} at the lr peak -> {r.momentum_max:g} (against the lr)")
    augment = [a.describe() for a in from_recipe(r)]  # the Loader's own list, in the order it applies them
    averaging = [f"EMA of the weights, decay {r.ema:g} per step (evaluated)" if r.ema else "",
                 f"lookahead every {r.lookahead} steps (trails more as training ends)" if r.lookahead else ""]
    whitening = any(hasattr(m, "init_whitening") for m in model.modules())
    wb = r.whiten_bias_epochs
    bias = ("bias trains every epoch" if wb < 0 else "bias frozen too" if wb == 0 else
            "bias trains in epoch 1 only" if wb == 1 else f"bias trains for the first {wb} epochs")
    small = [s for s in image_sizes(r, full) if s < full]  # the first epochs, under progressive resizing
    first = "epoch 1" if len(small) == 1 else f"epochs 1-{len(small)}"
    rows = [
        ("optimizer", f"SGD with {'Nesterov ' if r.nesterov else ''}momentum, {len(groups)} parameter groups"
                      + (", Muon for the conv filters" if len(groups) > 2 else "")),
        ("  weights", "none left for SGD: every weight is a conv filter, in Muon's group" if not groups[0]["params"]
                      else f"{'linear' if len(groups) > 2 else 'conv and linear'} weights ({group(groups[0])}): "
                           f"peak lr {r.lr:g}, weight decay {r.weight_decay:g}"),
        ("  the rest", f"BatchNorm and biases ({group(groups[1])}): peak lr {r.lr * r.bias_lr_scale:g} "
                       f"(x{r.bias_lr_scale:g}), no weight decay"),
        *([("  conv filters", f"Muon ({group(groups[2])}): orthogonalised Nesterov momentum {r.muon_momentum:g}, "
                               f"{r.muon_ns_steps} Newton-Schulz steps, peak lr {r.muon_lr:g}, " +
                               ("each filter rescaled to norm sqrt(out channels) before its step, no weight decay"
                                if r.muon_normalize else f"weight decay {r.weight_decay:g}"))] if len(groups) > 2 else []),
        ("lr schedule", f"{describe(r)}, stepped every batch"),
        ("momentum", momentum),
        ("loss", f"cross-entropy of the network's {output} (logits and log-probabilities train alike)" +
         (f", label smoothing {r.label_smoothing:g}" if r.label_smoothing else ", no label smoothing")),
        ("batches", f"{r.batch_size} images, {steps} steps per epoch (the last partial batch dropped), "
                    f"{r.epochs} epoch{'s' * (r.epochs != 1)} = {r.epochs * steps} steps"),
        ("augmentation", ", ".join(augment) or "none"),
        *([("image size", f"progressive: {', '.join(map(str, small))} px in {first}, then {full} px "
                          f"(test images: {full} px)")] if small else []),
        ("weight averaging", "; ".join(a for a in averaging if a) or "none"),
        *([("whitening layer", f"frozen filters; {bias}")] if whitening else []),
        ("test accuracy", "plain: one view per image" + {
            0: "", 1: "; TTA beside it: + the mirror (2 views)",
            2: "; TTA beside it: + mirror and 1 px shifts (6 views)"}[r.tta]),
        ("settings", f"{s.precision}{' autocast' if s.precision in ('bf16', 'fp16') else ''}"
                     f"{' + GradScaler' if s.precision == 'fp16' else ''} on {s.device}; torch.compile "
                     f"{s.compile}; {'channels_last' if s.channels_last else 'NCHW'} memory layout"),
    ]
    return "\n".join(f"{k:<18}{v}" for k, v in rows)


def smoothed_loss_floor(label_smoothing: float, classes: int) -> float:
    """The lowest cross-entropy a label-smoothed target allows: the target's own entropy (the true class
    gets 1 - e + e/K, each other class e/K)."""
    if not label_smoothing:
        return 0.0
    true, other = 1 - label_smoothing + label_smoothing / classes, label_smoothing / classes
    return -(true * math.log(true) + (classes - 1) * other * math.log(other))


def explain_history(record) -> str:
    """What a run's per-epoch numbers mean where they look wrong: epochs trained on smaller images, a
    training loss above the test loss, a training accuracy below the test accuracy."""
    history, config = record.history, record.config
    if not history:
        return "No epoch finished yet."
    recipe = Recipe.from_dict(config["recipe"])
    lines = []
    sizes = image_sizes(recipe, 32)[:len(history)]
    small = [(h, s) for h, s in zip(history, sizes) if s < 32]
    if small:
        which = ", ".join(f"epoch {h['epoch']} on {s} px images (test {_pct(h['test_acc'])})" for h, s in small)
        after = next((h for h, s in zip(history, sizes) if s == 32), None)
        lines.append(f"Progressive resizing trained {which}, tested on 32 px ones: a network that has not yet seen "
                     "full-size images, not a failing run." + (
                         f" From epoch {after['epoch']} on, training and test images are the same size "
                         f"(test {_pct(after['test_acc'])} after epoch {after['epoch']})." if after else ""))
    last = history[-1]
    classes = len(config.get("classes") or []) or 10
    floor = smoothed_loss_floor(recipe.label_smoothing, classes)
    if last["train_loss"] > last["test_loss"]:
        why = []
        if floor:
            p_true = 1 - recipe.label_smoothing + recipe.label_smoothing / classes
            why.append(f"the training target is label-smoothed ({recipe.label_smoothing:g}: {_pct(p_true)} on the "
                       f"true class, {_pct(recipe.label_smoothing / classes)} on each other), and a cross-entropy "
                       f"against it cannot go below {floor:.3f}, the target's own entropy; the test loss is plain "
                       "cross-entropy against the true class")
        why.append("the training loss is averaged over the epoch, on augmented images, while the weights still change")
        lines.append(f"The last epoch's training loss ({last['train_loss']:.4f}) is above its test loss "
                     f"({last['test_loss']:.4f}): " + "; ".join(why) + ".")
    if last["train_acc"] < last["test_acc"]:
        augment = [f"shifted by up to {recipe.translate} px" if recipe.translate else "",
                   "mirrored" if recipe.flip else "", f"with a {recipe.cutout} px square blanked" if recipe.cutout else ""]
        augment = ", ".join(a for a in augment if a)
        averaged = " and evaluated with averaged weights" if recipe.ema or recipe.lookahead else ""
        lines.append(f"Training accuracy ({_pct(last['train_acc'])}) is below test accuracy "
                     f"({_pct(last['test_acc'])}): it is counted while the network trains, on images "
                     f"{augment or 'as they come'}, over the epoch's changing weights; test accuracy is counted after "
                     f"the epoch, on the clean test images{averaged}.")
    reached = record.first_epoch_reaching(0.80)
    lines.append(f"Plain test accuracy after the last epoch: {_pct(last['test_acc'])}"
                 + (f", above 80 % from epoch {reached}." if reached else "; 80 % not reached."))
    return "\n".join(lines)


# --------------------------------------------------------------------------- 04: the errors

def explain_errors(cm: torch.Tensor, classes, top: int = 3) -> str:
    """The confusion matrix read out: the best and the worst class, and the mix-ups that dominate."""
    cm = cm.cpu().long()
    per_class = (cm.diag().float() / cm.sum(1).clamp(min=1)).tolist()
    order = sorted(range(len(classes)), key=lambda i: per_class[i])
    worst, best = order[0], order[-1]
    lines = [f"Plain test accuracy {_pct(cm.diag().sum().item() / max(cm.sum().item(), 1))}; best class "
             f"{classes[best]} ({_pct(per_class[best])}), worst {classes[worst]} ({_pct(per_class[worst])})."]
    off = cm.clone()
    off.fill_diagonal_(0)
    wrong = int(off.sum())
    if wrong:
        flat = sorted(((int(off[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if off[i, j]),
                      reverse=True)[:top]
        pairs = [f"{classes[i]} taken for {classes[j]} {n} times" for n, i, j in flat]
        share = sum(n for n, _, _ in flat) / wrong
        lines.append(f"The most frequent mistakes: {'; '.join(pairs)}: {_pct(share)} of all {wrong} mistakes.")
        n, i, j = flat[0]
        back = int(off[j, i])
        if back:
            lines.append(f"{classes[i]} and {classes[j]} are confused both ways ({n} and {back} images): at 32x32 px "
                         "they share shapes, textures and backgrounds.")
    return "\n".join(lines)
