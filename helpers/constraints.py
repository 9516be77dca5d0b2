"""The assignment's rules, checked by running the model once and watching what executes.

    python -m helpers.constraints seed            # prints the rules and receptive fields, exit 1 on a failure
    python -m helpers.constraints mynet.py:MyNet  # your own network (helpers/registry.py)

Why trace a forward pass instead of reading the module list: a functional
`F.max_pool2d` inside some forward() is a max-pool too, and a pool module that is
registered but never called is not. A TorchFunctionMode sees every conv and pool call,
whether it came from a module or a function; module hooks tell us which module ran it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .errors import UserError
from .model import ConvBlock, TransitionBlock, count_params
from .registry import ModelError, build_model

MAX_PARAMS = 1_000_000
REQUIRED_MAX_POOLS = 3


class RuleError(UserError):
    """A model that breaks one of the assignment's rules."""


def stage_kind(module: nn.Module) -> str | None:
    """"ConvBlock", "TransitionBlock" or None: what kind of stage a module is, for the structure rule.

    By isinstance of the package's blocks, so your subclasses count; and, for networks written in
    plain torch, by a class (or base class) of that name.
    """
    for kind, cls in (("TransitionBlock", TransitionBlock), ("ConvBlock", ConvBlock)):
        if isinstance(module, cls) or any(c.__name__ == kind for c in type(module).__mro__):
            return kind
    return None


@dataclass
class Op:
    """One conv or pool call seen during the forward pass."""
    kind: str            # "conv", "maxpool", "avgpool"
    module: str          # innermost module that ran it ("" for the top level)
    kernel: int
    stride: int
    padding: int
    dilation: int
    in_channels: int
    out_channels: int
    groups: int
    out_shape: tuple
    stages: tuple        # names of the ConvBlock / TransitionBlock modules it ran inside


@dataclass
class Rule:
    name: str
    passed: bool
    evidence: str


@dataclass
class Report:
    rules: list
    receptive_field: list = field(default_factory=list)   # rows: (layer, op, out shape, rf, jump)
    params: int = 0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def final_receptive_field(self) -> int:
        return self.receptive_field[-1][3] if self.receptive_field else 1

    def rules_text(self) -> str:
        return "\n".join(f"[{'PASS' if r.passed else 'FAIL'}] {r.name}: {r.evidence}" for r in self.rules)

    def rf_text(self) -> str:
        lines = [f"{'layer':<28}{'op':<22}{'output':<16}{'RF':>5}{'jump':>6}"]
        for layer, op, shape, rf, jump in self.receptive_field:
            lines.append(f"{layer:<28}{op:<22}{'x'.join(map(str, shape)):<16}{rf:>5}{jump:>6}")
        lines.append(f"final receptive field: {self.final_receptive_field} px")
        return "\n".join(lines)

    def __str__(self):
        return self.rules_text() + "\n\n" + self.rf_text()

    def require(self, name="the model"):
        """Raise one RuleError line naming every broken rule and its evidence; nothing when all pass."""
        broken = [f"{r.name} ({r.evidence})" for r in self.rules if not r.passed]
        if broken:
            raise RuleError(f"{name} breaks the assignment's rules: {'; '.join(broken)}. The full report: "
                            f"python -m helpers.constraints {name}")


def _pair(v) -> int:
    # square kernels/strides only in this project: (3, 3) -> 3
    return v[0] if isinstance(v, (tuple, list)) else int(v)


class _Tracer(TorchFunctionMode):
    """Records conv and pool calls, tagged with the module stack at the time."""

    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []
        self.stack: list[tuple[str, nn.Module]] = []

    def _where(self):
        name = self.stack[-1][0] if self.stack else ""
        stages = tuple(n for n, m in self.stack if stage_kind(m))
        return name, stages

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        fname = getattr(func, "__name__", "")
        x = args[0] if args else kwargs.get("input")
        if fname == "conv2d":
            w = args[1] if len(args) > 1 else kwargs["weight"]
            get = lambda i, key, default: args[i] if len(args) > i else kwargs.get(key, default)  # noqa: E731
            padding = get(4, "padding", 0)
            padding = 0 if isinstance(padding, str) else _pair(padding)
            groups = get(6, "groups", 1)
            self.ops.append(Op("conv", *self._where()[:1], _pair(w.shape[-1]), _pair(get(3, "stride", 1)),
                               padding, _pair(get(5, "dilation", 1)), x.shape[1], w.shape[0], groups,
                               tuple(out.shape[1:]), self._where()[1]))
        elif "max_pool2d" in fname or "avg_pool2d" in fname:
            kind = "maxpool" if "max" in fname else "avgpool"
            res = out[0] if isinstance(out, tuple) else out
            if "adaptive" in fname:  # global pooling: one window covers the input
                k, s, p = x.shape[-1] // res.shape[-1], x.shape[-1] // res.shape[-1], 0
            else:
                get = lambda i, key, default: args[i] if len(args) > i else kwargs.get(key, default)  # noqa: E731
                k = _pair(get(1, "kernel_size", 2))
                s = get(2, "stride", None)
                s = k if s in (None, [], ()) else _pair(s)
                p = _pair(get(3, "padding", 0))
            self.ops.append(Op(kind, *self._where()[:1], k, s, p, 1, x.shape[1], res.shape[1], 1,
                               tuple(res.shape[1:]), self._where()[1]))
        return out


def trace(model: nn.Module, input_size=(1, 3, 32, 32)) -> list[Op]:
    """Run one forward pass (eval mode, no grad) and return the conv/pool calls in order."""
    tracer = _Tracer()
    handles = []

    def enter(name):
        def hook(module, inputs):
            tracer.stack.append((name, module))  # returns None: inputs unchanged
        return hook

    def leave(module, inputs, output):
        tracer.stack.pop()  # returns None: output unchanged

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    was_training = model.training
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        model.eval()
        with torch.no_grad(), tracer:
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    # the mode is switched off inside its own handler, so nested calls are not double counted
    return tracer.ops


def receptive_field(ops: list[Op]):
    """Receptive field after every layer: rf += (dilated kernel - 1) * jump; jump *= stride."""
    rf, jump, rows = 1, 1, []
    for op in ops:
        k_eff = op.dilation * (op.kernel - 1) + 1
        rf += (k_eff - 1) * jump
        jump *= op.stride
        label = f"{op.kind} {op.kernel}x{op.kernel}"
        if op.dilation > 1:
            label += f" d{op.dilation}"
        if op.kind == "conv" and op.groups > 1:
            label += f" g{op.groups}"
        rows.append((op.module or "(top)", label, op.out_shape, rf, jump))
    return rows


def check(model: nn.Module, input_size=(1, 3, 32, 32)) -> Report:
    """Check every rule of the assignment; each Rule carries the evidence it was judged on."""
    ops = trace(model, input_size)
    convs = [o for o in ops if o.kind == "conv"]
    pools = [o for o in ops if o.kind == "maxpool"]
    rules = []

    params = count_params(model)
    rules.append(Rule("parameters < 1,000,000", params < MAX_PARAMS, f"{params:,} parameters"))

    where = ", ".join(f"{p.module or '(functional)'}->{'x'.join(map(str, p.out_shape[1:]))}" for p in pools)
    rules.append(Rule(f"exactly {REQUIRED_MAX_POOLS} max-pools", len(pools) == REQUIRED_MAX_POOLS,
                      f"{len(pools)} max-pool calls ran" + (f": {where}" if pools else "")))

    separable = []
    for i, c in enumerate(convs):
        if c.groups == c.in_channels > 1 and i + 1 < len(convs):
            nxt = convs[i + 1]
            if nxt.kernel == 1 and nxt.in_channels == c.out_channels:
                separable.append(c.module)
    rules.append(Rule("depthwise-separable conv", bool(separable),
                      f"{len(separable)} depthwise conv(s) feeding a 1x1 conv"
                      + (f", first at {separable[0]}" if separable else "")))

    dilated = [c.module for c in convs if c.dilation > 1 and c.kernel > 1]
    rules.append(Rule("dilated conv", bool(dilated),
                      f"{len(dilated)} conv(s) with dilation > 1" + (f", first at {dilated[0]}" if dilated else "")))

    rules.append(_structure_rule(model, pools))
    return Report(rules, receptive_field(ops), params)


def _structure_rule(model, pools) -> Rule:
    """Stages go ConvBlock -> TransitionBlock, and every max-pool runs inside a TransitionBlock."""
    order = [(n, stage_kind(m)) for n, m in model.named_modules() if stage_kind(m)]
    # keep the outermost stage modules only, in registration order
    top = dict((n, t) for n, t in order if not any(n.startswith(o + ".") for o, _ in order))
    names, kinds = list(top), list(top.values())
    problems = []
    if "ConvBlock" not in kinds or "TransitionBlock" not in kinds:
        problems.append("needs at least one ConvBlock and one TransitionBlock (subclass helpers' ConvBlock / "
                        "TransitionBlock, or name your stage classes so)")
    for i, t in enumerate(kinds):
        if t == "TransitionBlock" and (i == 0 or kinds[i - 1] != "ConvBlock"):
            problems.append(f"{names[i]} (TransitionBlock) does not follow a ConvBlock")
    stray = [p.module or "(top level)" for p in pools
             if not any(top.get(s) == "TransitionBlock" for s in p.stages)]
    if stray:
        problems.append(f"max-pool outside a TransitionBlock at {', '.join(stray)}")
    seq = " -> ".join("C" if t == "ConvBlock" else "T" for t in kinds) or "no stages"
    return Rule("ConvBlock -> TransitionBlock structure", not problems,
                f"stages {seq}" + ("; " + "; ".join(problems) if problems else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.constraints",
                                description="Check a model against the assignment's rules.")
    p.add_argument("model", help="a registered name (seed, fast, wide, air) or your own FILE.py:NAME")
    args = p.parse_args(argv)
    try:
        report = check(build_model(args.model))
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model: {args.model}")
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
