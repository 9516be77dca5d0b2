"""A network's first pass, before any training: a few real images at every size the recipe will feed it.

Designing the network is the assignment, so the network is the part most likely to be wrong, and a
mistake found inside the training loop is a traceback from deep in torch. Here it is one line that names
the layer and the shapes, before the clock starts:

    recipe, kind = check_network(model, recipe, images, classes=10, log=print)

- An output that is not one row of `classes` scores per image, or not finite, is an error.
- An output of probabilities (a softmax head) is an error: cross-entropy needs logits or log-probabilities.
- A network that works on full-size images but not on the smaller ones of progressive resizing (a pooling
  window or an nn.Linear sized for 32 px) trains with progressive resizing off, saying why and what it costs.

Nothing here changes the network: the passes run in eval mode without gradients (BatchNorm statistics,
dropout and the random state are untouched).
"""
from __future__ import annotations

import torch

from .errors import UserError
from .loader import resize
from .loop import image_sizes
from .model import output_kind
from .recipes import Recipe


class NetworkError(UserError):
    """A network that cannot be trained as it is: the message names the layer, the shapes and the fix."""


def _shape(x) -> str:
    if isinstance(x, torch.Tensor):
        return "x".join(map(str, x.shape))
    if isinstance(x, (tuple, list)):
        return ", ".join(_shape(v) for v in x)
    return type(x).__name__


class LayerFailure(Exception):
    """A forward pass that failed in `layer`, whose input had `shapes`."""

    def __init__(self, layer: str, shapes: str, error: BaseException):
        first = (str(error).strip().splitlines() or [""])[0]
        super().__init__(f"{layer} (input {shapes}): {type(error).__name__}: {first}")
        self.layer, self.shapes, self.error = layer, shapes, error


@torch.no_grad()
def first_pass(model, x: torch.Tensor) -> torch.Tensor:
    """model(x) in eval mode; a failure is a LayerFailure naming the innermost layer that was running and its
    input shape (the network's own forward() when the failing call is not inside a submodule)."""
    stack, handles = [], []

    def enter(name):
        def hook(module, inputs):
            stack.append((name or "the network's forward()", f"{type(module).__name__}", _shape(inputs)))
        return hook

    def leave(module, inputs, output):
        stack.pop()

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    was_training = model.training
    try:
        model.eval()
        return model(x)
    except Exception as e:
        name, cls, shapes = stack[-1] if stack else ("the network", type(model).__name__, _shape(x))
        raise LayerFailure(f"{name} ({cls})", shapes, e) from e
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def output_problem(out, batch: int, classes: int) -> str | None:
    """Why an output cannot be trained on (one phrase), or None."""
    if not isinstance(out, torch.Tensor):
        return f"returns a {type(out).__name__}, not a tensor of class scores"
    if out.dim() != 2 or len(out) != batch or out.shape[1] < classes:
        return (f"returns shape {_shape(out)} for {batch} images; training needs ({batch}, {classes}): one row of "
                f"{classes} class scores per image (flatten the head's output, e.g. x.flatten(1))")
    if not torch.isfinite(out).all():
        return "returns NaN or infinite scores before any training (look for a division by zero or a log of 0)"
    if output_kind(out) == "probabilities":
        return ("returns probabilities (a softmax at the end): return the logits (drop the softmax) or "
                "log-probabilities (log_softmax); cross-entropy of probabilities trains badly")
    return None


def check_output(model, images: torch.Tensor, classes: int) -> torch.Tensor:
    """The network's output on `images`; NetworkError, one line, when it fails or cannot be trained on."""
    try:
        out = first_pass(model, images)
    except LayerFailure as e:
        size = "x".join(map(str, images.shape[-2:]))
        raise NetworkError(f"the network fails on {size} px images, before any training: {e}") from None
    problem = output_problem(out, len(images), classes)
    if problem:
        raise NetworkError(f"the network {problem}")
    return out


def check_network(model, recipe: Recipe, images: torch.Tensor, classes: int, log=print) -> tuple[Recipe, str]:
    """Run `model` on `images` (a few normalized training images) at full size and at each smaller size the
    recipe trains on; return the recipe to train (progressive resizing off when the network cannot take the
    smaller images) and what the network returns ("logits" or "log-probabilities").

    Raises NetworkError, one line, when the network fails at full size or returns what cannot be trained on.
    """
    full = images.shape[-2]
    out = check_output(model, images, classes)
    sizes = image_sizes(recipe, full)
    for size in sorted({s for s in sizes if s < full}):
        try:
            small = first_pass(model, resize(images, size))
            failure = output_problem(small, len(images), classes)
        except LayerFailure as e:
            failure = str(e)
        if failure:
            # the recipe's small first epochs only save time: train them at full size instead
            cost = len(sizes) * full ** 2 / sum(s ** 2 for s in sizes)
            small_epochs = sum(s < full for s in sizes)
            first = "first epoch trains" if small_epochs == 1 else f"first {small_epochs} epochs train"
            log(f"note: progressive resizing is off for this run: the network cannot take {size} px images "
                f"({failure}). Its {first} at {full} px instead, about {cost:.1f}x the training time. (A pool or "
                f"nn.Linear sized for {full} px images does this; global pooling works at any size.)")
            return recipe.override(resize_start=0, resize_epochs=0), output_kind(out)
    return recipe, output_kind(out)
