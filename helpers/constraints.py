"""The assignment's rules, checked by running the model once and watching what executes.

    python -m helpers.constraints seed                   # the rules, the output, receptive fields; exit 1 on a failure
    python -m helpers.constraints mynet.py:MyNet         # your own network (helpers/registry.py)
    python -m helpers.constraints colab.ipynb:Net        # or the network a notebook defines

Why trace a forward pass instead of reading the module list: a functional `F.max_pool2d`
inside some forward() is a max-pool too, a pool module that is registered but never called is
not, and one pool module called three times is three pools. Students name their blocks anything
(convblock1, MP1, pool1, conv4, one nn.Sequential for the whole network), so the checker judges
the graph as an instructor reads it, and names only label what it read:

- a transition is a max-pool that makes the map smaller, with the 1x1 conv right before or
  right after it when there is one; a conv block is the run of convs between two transitions
  (or before the first). Convs after the last transition (a last block, a 1x1 classifier) are
  the last stage; average pooling is never a transition.
- a depthwise-separable conv is a pair at one place: a depthwise conv whose output tensor
  reaches a 1x1 conv through normalization, activation or dropout only. That needs data flow,
  not op order, so the trace records which op produced each tensor.

A TorchFunctionMode sees every torch call, whether it came from a module or a function; module
hooks tell us which module ran it.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .errors import UserError
from .model import ConvBlock, TransitionBlock, count_params, output_kind
from .registry import ModelError, build_model, list_models

MAX_PARAMS = 1_000_000
REQUIRED_MAX_POOLS = 3


class RuleError(UserError):
    """A model that breaks one of the assignment's rules."""


def stage_kind(module: nn.Module) -> str | None:
    """"ConvBlock", "TransitionBlock" or None: what a module calls itself, by isinstance of the package's
    blocks or by a class (or base class) of that name.

    A label only: the rules read stages from the executed graph (`Report.stages`), whatever the classes.
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
    out_shape: tuple     # (C, H, W)
    stages: tuple        # names of the modules it ran inside that call themselves ConvBlock / TransitionBlock
    in_shape: tuple = ()  # (C, H, W) of its input
    name: str = ""       # how reports name it: the module, or "F.max_pool2d in block1" for a function call
    index: int = -1      # its position in trace()'s list

    @property
    def reduces(self) -> bool:
        """Whether the output map has fewer pixels than the input map (a pool that downsamples)."""
        return bool(self.in_shape) and math.prod(self.out_shape[1:]) < math.prod(self.in_shape[1:])


@dataclass
class Rule:
    name: str
    passed: bool
    evidence: str


@dataclass
class Stage:
    """One stage as read from the graph: a conv block (C1, C2, ...) or a transition (T1, T2, ...)."""
    kind: str            # "ConvBlock" or "TransitionBlock"
    name: str            # "C1", "T1", ...
    ops: list            # indices into Report.ops, in execution order (every op of the stage, pools included)
    label: str           # "C1 [convblock1.0, convblock1.4: 32x32]"
    spatial: bool = False  # a ConvBlock with a conv of kernel > 1


OUTPUT_ADVICE = {
    "logits": "fine: training's cross-entropy takes logits or log-probabilities alike",
    "log-probabilities": "fine: training's cross-entropy takes logits or log-probabilities alike",
    "probabilities": ("a softmax head, which training refuses: cross-entropy takes the log-softmax of these again, "
                      "squashing every gradient; return the logits (or log_softmax) instead"),
}


@dataclass
class Report:
    rules: list
    receptive_field: list = field(default_factory=list)   # rows: (layer, op, out shape, rf, jump)
    params: int = 0
    stages: list = field(default_factory=list)            # Stage, in execution order
    ops: list = field(default_factory=list)               # what trace() returns, for the diagram
    separable: list = field(default_factory=list)         # (depthwise op index, 1x1 op index) pairs
    output: str = ""          # "logits", "log-probabilities", "probabilities" or "unknown"
    output_shape: tuple = ()  # the traced forward pass's output, batch included

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def final_receptive_field(self) -> int:
        return self.receptive_field[-1][3] if self.receptive_field else 1

    def rules_text(self) -> str:
        return "\n".join(f"[{'PASS' if r.passed else 'FAIL'}] {r.name}: {r.evidence}" for r in self.rules)

    def output_text(self) -> str:
        """One line on what the network returns and whether training can use it."""
        shape = "(N, " + ", ".join(map(str, self.output_shape[1:])) + ")"
        if self.output == "unknown":
            return f"output: not a tensor of class scores ({shape if self.output_shape else '?'}): " \
                   "return one (N, classes) tensor"
        line = f"output: {shape} {self.output} ({OUTPUT_ADVICE[self.output]})"
        if len(self.output_shape) != 2:
            line += f"; but it is {len(self.output_shape)}-D, not (N, classes): flatten it (x.flatten(1)) first"
        return line

    def rf_text(self) -> str:
        lines = [f"{'layer':<28}{'op':<22}{'output':<16}{'RF':>5}{'jump':>6}"]
        for layer, op, shape, rf, jump in self.receptive_field:
            lines.append(f"{layer:<28}{op:<22}{'x'.join(map(str, shape)):<16}{rf:>5}{jump:>6}")
        lines.append(f"final receptive field: {self.final_receptive_field} px")
        return "\n".join(lines)

    def __str__(self):
        return self.rules_text() + "\n" + self.output_text() + "\n\n" + self.rf_text()

    def require(self, name="the model"):
        """Raise one RuleError line naming every broken rule and its evidence; nothing when all pass."""
        broken = [f"{r.name} ({r.evidence})" for r in self.rules if not r.passed]
        if broken:
            raise RuleError(f"{name} breaks the assignment's rules: {'; '.join(broken)}. The full report: "
                            f"python -m helpers.constraints {name}")


# --------------------------------------------------------------------------- the trace

def _pair(v) -> int:
    # square kernels/strides only in this project: (3, 3) -> 3
    return v[0] if isinstance(v, (tuple, list)) else int(v)


def _tensors(obj, depth=0):
    """The tensors in a call's arguments or result (lists, tuples and dicts opened two levels deep)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 3 and isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item, depth + 1)


def _path(module: str) -> str:
    # a whole-network nn.Sequential names its layers 0, 1, 2 ...: model[4].pool says what that is
    parts = module.split(".")
    if not parts[0].isdigit():
        return module
    return "model" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts)


def _fname(func) -> str:
    # Tensor.__add__ -> "add", torch.relu_ -> "relu", F._max_pool2d -> "max_pool2d"
    return getattr(func, "__name__", "").strip("_")


POOL_LAYERS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
               nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)


@dataclass
class _Node:
    """One torch call that produced a tensor: the data-flow graph is these, linked by `inputs`."""
    func: str
    inputs: tuple        # node ids of the tensors it consumed
    op: int | None       # index into the ops list for a conv or pool


@dataclass
class _Trace:
    ops: list
    nodes: list
    output: object


class _Tracer(TorchFunctionMode):
    """Records conv and pool calls, tagged with the module stack at the time, and which call produced
    each tensor."""

    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []
        self.stack: list[tuple[str, nn.Module]] = []
        self.nodes: list[_Node] = []
        self.producer: dict[int, int] = {}  # id(tensor) -> node id
        # every tensor seen stays referenced until the trace ends, so no id is reused for another tensor
        self.alive: list[torch.Tensor] = []

    def feed(self, x):
        self.nodes.append(_Node("input", (), None))
        self.producer[id(x)] = 0
        self.alive.append(x)

    def _where(self):
        name = self.stack[-1][0] if self.stack else ""
        stages = tuple(n for n, m in self.stack if stage_kind(m))
        return name, stages

    def _name(self, fname, layer_types):
        # a layer's own call is named by the layer; a function call by the function and where it ran
        module, innermost = self.stack[-1] if self.stack else ("", None)
        if isinstance(innermost, layer_types):
            return _path(module)
        return f"F.{fname} in {_path(module) or 'forward'}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fname = _fname(func)
        x = args[0] if args else kwargs.get("input")
        is_conv = fname == "conv2d"
        is_pool = "max_pool2d" in fname or "avg_pool2d" in fname
        # a conv's weight is an input too, but only the feature map carries the data flow we follow
        consumed = [x] if (is_conv or is_pool) else list(_tensors((args, kwargs)))
        inputs = tuple(dict.fromkeys(self.producer[id(t)] for t in consumed if id(t) in self.producer))
        out = func(*args, **kwargs)
        op_index = None
        get = lambda i, key, default: args[i] if len(args) > i else kwargs.get(key, default)  # noqa: E731
        if is_conv or is_pool:
            module, stages = self._where()
        if is_conv:
            w = get(1, "weight", None)
            padding = get(4, "padding", 0)
            padding = 0 if isinstance(padding, str) else _pair(padding)
            op_index = len(self.ops)
            self.ops.append(Op("conv", module, _pair(w.shape[-1]), _pair(get(3, "stride", 1)), padding,
                               _pair(get(5, "dilation", 1)), x.shape[1], w.shape[0], get(6, "groups", 1),
                               tuple(out.shape[1:]), stages, tuple(x.shape[1:]),
                               self._name(fname, nn.modules.conv._ConvNd), op_index))
        elif is_pool:
            kind = "maxpool" if "max" in fname else "avgpool"
            res = out[0] if isinstance(out, tuple) else out
            if "adaptive" in fname:  # global pooling: one window covers the input
                k, s, p = x.shape[-1] // res.shape[-1], x.shape[-1] // res.shape[-1], 0
            else:
                k = _pair(get(1, "kernel_size", 2))
                s = get(2, "stride", None)
                s = k if s in (None, [], ()) else _pair(s)
                p = _pair(get(3, "padding", 0))
            op_index = len(self.ops)
            self.ops.append(Op(kind, module, k, s, p, 1, x.shape[1], res.shape[1], 1, tuple(res.shape[1:]), stages,
                               tuple(x.shape[1:]), self._name(fname, POOL_LAYERS), op_index))
        produced = list(_tensors(out))
        if produced:
            # an in-place op (ReLU(inplace=True)) returns its input: the tensor now comes from this node,
            # whose input is the node that made it before
            self.nodes.append(_Node(fname, inputs, op_index))
            for t in produced:
                self.producer[id(t)] = len(self.nodes) - 1
                self.alive.append(t)
        return out


def _trace(model: nn.Module, input_size=(1, 3, 32, 32)) -> _Trace:
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
    # random rather than zero pixels: on zeros a bias-free network returns all zeros, whatever its head
    x = torch.randn(input_size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        model.eval()
        with torch.no_grad():
            tracer.feed(x)
            with tracer:
                out = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    # the mode is switched off inside its own handler, so nested calls are not double counted
    return _Trace(tracer.ops, tracer.nodes, out)


def trace(model: nn.Module, input_size=(1, 3, 32, 32)) -> list[Op]:
    """Run one forward pass (eval mode, no grad) and return the conv/pool calls in order."""
    return _trace(model, input_size).ops


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


# --------------------------------------------------------------------------- reading the graph

def _hw(shape) -> str:
    return "x".join(map(str, shape[1:]))


def _few(names, limit=3) -> str:
    if len(names) <= limit + 1:  # "+1 more" would take the room of the name itself
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" +{len(names) - limit} more"


def _is_1x1(op: Op) -> bool:
    return op.kind == "conv" and op.kernel == 1


# data flow between a depthwise conv and its 1x1 conv may pass these only: they act on each pixel
# (and channel) alone, so a depthwise conv and a 1x1 conv still form one separable conv around them
NORMALIZATION = {"batch_norm", "instance_norm", "layer_norm", "group_norm", "local_response_norm", "rms_norm"}
ACTIVATION = {"relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish",
              "hardsigmoid", "hardtanh", "sigmoid", "tanh", "softplus", "softsign", "prelu", "rrelu", "threshold",
              "logsigmoid", "tanhshrink", "hardshrink", "softshrink"}
DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
           "feature_dropout"}
IDENTITY_LIKE = {"contiguous", "clone", "to", "float", "half", "double", "bfloat16", "type", "detach", "cpu", "cuda"}
PASS_THROUGH = NORMALIZATION | ACTIVATION | DROPOUT | IDENTITY_LIKE
# reductions over the map: as much a pooling as avg_pool2d
POOLING_CALLS = {"mean", "amax", "max", "sum", "amin", "logsumexp"}


class _Flow:
    """Where a traced op's output goes: walks the data-flow graph forward from an op."""

    def __init__(self, tr: _Trace):
        self.tr = tr
        self.consumers = {}
        self.node_of = {}
        for n, node in enumerate(tr.nodes):
            if node.op is not None:
                self.node_of[node.op] = n
            for i in node.inputs:
                self.consumers.setdefault(i, []).append(n)

    def reached(self, op: Op):
        """(op, first breaking call or None) for each op the output of `op` reaches, nearest first: a
        breadth-first walk that stops at every conv it reaches and notes the first call on the way that
        is not a per-pixel one (PASS_THROUGH); a pool reached before any such call is listed too, then
        walked through as one."""
        start = self.node_of[op.index]
        frontier, seen = [(start, None)], {start}
        while frontier:
            node_id, broken_by = frontier.pop(0)
            for c in self.consumers.get(node_id, ()):
                node = self.tr.nodes[c]
                if node.op is not None and (self.tr.ops[node.op].kind == "conv" or broken_by is None):
                    yield self.tr.ops[node.op], broken_by
                    if self.tr.ops[node.op].kind == "conv":
                        continue
                if c in seen:
                    continue
                seen.add(c)
                frontier.append((c, broken_by if node.func in PASS_THROUGH else broken_by or node.func))

    def feeds(self, a: Op, b: Op) -> bool:
        """Whether b consumes a's output through per-pixel calls only."""
        return any(op.index == b.index and broken is None for op, broken in self.reached(a))


def read_stages(tr: _Trace, pairs=()) -> tuple[list[Stage], list[str]]:
    """The stages a forward pass runs through, and where they break the ConvBlock -> TransitionBlock
    pattern (empty when every transition follows a conv block with a spatial conv).

    `pairs`: the depthwise-separable pairs found, so a pair's 1x1 conv stays in its conv block.
    """
    ops, flow = tr.ops, _Flow(tr)
    seq = [o for o in ops if o.kind == "conv" or (o.kind == "maxpool" and o.reduces)]
    pools = [i for i, o in enumerate(seq) if o.kind == "maxpool"]
    pointwise = {p for _, p in pairs}
    beside, taken = {}, set()
    for i in pools:
        # the 1x1 conv of a transition is the one its pool feeds, or the one that feeds its pool, through
        # per-pixel calls only; the network's last conv (the classifier) is not one, it is the head
        after = i + 1 if (i + 1 < len(seq) and _is_1x1(seq[i + 1]) and i + 2 < len(seq)
                          and flow.feeds(seq[i], seq[i + 1])) else None
        before = i - 1 if (i > 0 and _is_1x1(seq[i - 1]) and i - 1 not in taken and seq[i - 1].index not in pointwise
                           and flow.feeds(seq[i - 1], seq[i])) else None
        top = seq[i].module.split(".")[0]
        # which neighbour joins the pool changes only the labels (a 1x1 conv is never the spatial conv a
        # block needs): the one from the pool's own top-level module reads best, else the one after it
        if before is not None and (after is None or (seq[before].module.split(".")[0] == top
                                                     and seq[after].module.split(".")[0] != top)):
            after = None
        else:
            before = None
        beside[i] = (before, after)
        taken.update(j for j in (before, after) if j is not None)

    stages, problems, block = [], [], []

    def close_block(number):
        if block:
            sizes = [_hw(block[0].out_shape), _hw(block[-1].out_shape)]
            size = sizes[0] if sizes[0] == sizes[1] else "->".join(sizes)
            stages.append(Stage("ConvBlock", f"C{number}", [o.index for o in block],
                                f"C{number} [{_few([o.name for o in block])}: {size}]",
                                any(o.kernel > 1 for o in block)))
            block.clear()

    n = 0
    for i, op in enumerate(seq):
        if i in taken:
            continue
        if op.kind == "conv":
            block.append(op)
            continue
        n += 1
        close_block(n)
        before, after = beside[i]
        parts = ([f"1x1 {seq[before].name}"] if before is not None else []) + [op.name] \
            + ([f"1x1 {seq[after].name}"] if after is not None else [])
        last = seq[after] if after is not None else op
        members = [seq[j].index for j in (before, i, after) if j is not None]
        stages.append(Stage("TransitionBlock", f"T{n}", members, f"T{n} [{' + '.join(parts)}: {_hw(last.out_shape)}]"))
        previous = stages[-2] if len(stages) > 1 else None
        if previous is None:
            problems.append(f"T{n} comes first: no conv block before it")
        elif previous.kind == "TransitionBlock":
            problems.append(f"T{n} follows {previous.name} with no conv block between")
        elif not previous.spatial:
            problems.append(f"{previous.name} has no spatial (k > 1) conv before T{n}, only 1x1 convs")
    close_block(n + 1)
    if not pools:
        problems.insert(0, "no max-pool reduces the map, so there is no transition")
    _place_the_rest(ops, stages)
    return stages, problems


def _place_the_rest(ops, stages):
    """Every op not read into a stage (average pools, pools that keep the map) joins one, so that a
    drawing of the stages shows every layer: the conv block it runs in, or after a transition the
    stage that follows (a global average pool belongs to the head, not to the last transition)."""
    where = {i: s for s, stage in enumerate(stages) for i in stage.ops}
    if not stages and ops:
        stages.append(Stage("ConvBlock", "C1", [], "C1 [no conv]"))
    current = None
    for op in ops:
        if op.index in where:
            current = where[op.index]
        elif current is None:
            stages[0].ops.append(op.index)
        elif stages[current].kind == "TransitionBlock" and current + 1 < len(stages):
            stages[current + 1].ops.append(op.index)
        else:
            stages[current].ops.append(op.index)
    for stage in stages:
        stage.ops.sort()


def _is_depthwise(op: Op) -> bool:
    # any channel multiplier: out_channels a multiple of in_channels
    return op.kind == "conv" and op.groups == op.in_channels > 1 and op.out_channels % op.in_channels == 0


def _pointwise_partner(flow: _Flow, dw: Op) -> tuple[int | None, str]:
    """(index of the 1x1 conv the depthwise conv's output reaches through per-pixel calls only, "") or
    (None, why not)."""
    reasons = []
    for op, broken_by in flow.reached(dw):
        if op.kind != "conv":
            continue
        if op.kernel == 1 and broken_by is None:
            return op.index, ""
        if broken_by is not None:
            what = "pooling" if ("pool" in broken_by or broken_by in POOLING_CALLS) else broken_by
            reasons.append(f"reaches {op.name} only through {broken_by}: {what} breaks the pair")
        else:
            reasons.append(f"feeds a {op.kernel}x{op.kernel} conv ({op.name}), not a 1x1")
    return None, reasons[0] if reasons else "its output reaches no conv"


def _separable_rule(tr: _Trace) -> tuple[Rule, list]:
    flow = _Flow(tr)
    pairs, rejected = [], []
    for c in tr.ops:
        if _is_depthwise(c):
            partner, why = _pointwise_partner(flow, c)
            if partner is not None:
                pairs.append((c.index, partner))
            else:
                rejected.append(f"{c.name}: {why}")
        elif c.kind == "conv" and 1 < c.groups < c.in_channels:
            rejected.append(f"{c.name}: a grouped conv ({c.groups} groups < {c.in_channels} input channels), "
                            "not depthwise")
    found = [f"{tr.ops[d].name} -> {tr.ops[p].name}" for d, p in pairs]
    if pairs:
        evidence = f"{len(pairs)} depthwise conv(s) reaching a 1x1 conv: {_few(found, 2)}"
    elif rejected:
        evidence = "no depthwise conv reaches a 1x1 conv through normalization, activation or dropout only"
    else:
        evidence = "no depthwise conv (groups == input channels > 1) ran"
    if rejected:
        evidence += "; not a pair: " + "; ".join(rejected[:4]) + (f" (+{len(rejected) - 4} more)"
                                                                   if len(rejected) > 4 else "")
    return Rule("depthwise-separable conv", bool(pairs), evidence), pairs


def _pool_rule(ops) -> Rule:
    pools = [o for o in ops if o.kind == "maxpool"]
    counted = [o for o in pools if o.reduces]
    where = ", ".join(f"{p.name} {_hw(p.in_shape)}->{_hw(p.out_shape)}" for p in counted)
    evidence = f"{len(counted)} max-pool calls reduce the map" + (f": {where}" if counted else "")
    kept = [f"{p.name} {_hw(p.in_shape)}->{_hw(p.out_shape)}" for p in pools if not p.reduces]
    if kept:
        evidence += f"; {', '.join(kept)}: does not reduce the map, not counted"
    return Rule(f"exactly {REQUIRED_MAX_POOLS} max-pools", len(counted) == REQUIRED_MAX_POOLS, evidence)


def _output(out) -> tuple[str, tuple]:
    """(model.output_kind of the traced output, or "unknown" when it is no tensor of scores; its shape)."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or not out.is_floating_point():
        return "unknown", tuple(getattr(out, "shape", ()))
    return output_kind(out), tuple(out.shape)


def check(model: nn.Module, input_size=(1, 3, 32, 32)) -> Report:
    """Check every rule of the assignment; each Rule carries the evidence it was judged on."""
    tr = _trace(model, input_size)
    ops = tr.ops
    convs = [o for o in ops if o.kind == "conv"]
    rules = []

    params = count_params(model)
    rules.append(Rule("parameters < 1,000,000", params < MAX_PARAMS, f"{params:,} parameters"))
    rules.append(_pool_rule(ops))
    separable, pairs = _separable_rule(tr)
    rules.append(separable)

    dilated = [c.name for c in convs if c.dilation > 1 and c.kernel > 1]
    rules.append(Rule("dilated conv", bool(dilated),
                      f"{len(dilated)} conv(s) with dilation > 1" + (f", first at {dilated[0]}" if dilated else "")))

    stages, problems = read_stages(tr, pairs)
    rules.append(Rule("ConvBlock -> TransitionBlock structure", not problems,
                      "stages " + (" -> ".join(s.label for s in stages) or "none")
                      + ("; " + "; ".join(problems) if problems else "")))
    output, output_shape = _output(tr.output)
    return Report(rules, receptive_field(ops), params, stages, ops, pairs, output, output_shape)


# --------------------------------------------------------------------------- command line

HOW = """\
How each rule is read from one traced forward pass (class and attribute names never decide a
verdict; they only label what was read):
  parameters < 1,000,000        counted.
  exactly 3 max-pools           max-pool calls that make the map smaller: a functional F.max_pool2d
                                counts, one pool module called three times is three, a global
                                max-pool head counts; a pool that keeps the map (MaxPool2d(1, 1),
                                or padding that cancels the stride) is listed, not counted.
  depthwise-separable conv      a depthwise conv (groups == its input channels > 1, any channel
                                multiplier) whose output tensor reaches a 1x1 conv through
                                normalization, activation or dropout only. Pooling in between (a
                                1x1 classifier after global pooling) breaks the pair, and so does
                                anything else (an add); a grouped conv is not depthwise.
  dilated conv                  a conv with dilation > 1 and kernel > 1.
  ConvBlock -> TransitionBlock  a transition (T) is a max-pool that makes the map smaller, with the
    structure                   1x1 conv that feeds it or that it feeds; a conv block (C) is the run
                                of convs before it. Every T must follow a C holding a conv of
                                kernel > 1: a pool first, two pools side by side or only 1x1 convs
                                between two pools fail, naming the stage. The convs after the last T
                                (a last block, the classifier) are the last stage; average pooling
                                is no T.

Example: tests/student_nets/sequential_blocks.py, a student's network of nn.Sequential blocks
convblock1..4 and MP1..3 (max-pool, then a 1x1 conv), a 1x1 classifier after average pooling:
"""

EXAMPLE = """\
[PASS] parameters < 1,000,000: 5,856 parameters
[PASS] exactly 3 max-pools: 3 max-pool calls reduce the map: MP1.0 32x32->16x16, MP2.0 16x16->8x8, MP3.0 8x8->4x4
[PASS] depthwise-separable conv: 1 depthwise conv(s) reaching a 1x1 conv: convblock3.0 -> convblock3.3
[PASS] dilated conv: 1 conv(s) with dilation > 1, first at convblock2.0
[PASS] ConvBlock -> TransitionBlock structure: stages C1 [convblock1.0, convblock1.4: 32x32] -> T1 [MP1.0 + 1x1 MP1.1: 16x16] -> C2 [convblock2.0, convblock2.4: 16x16] -> T2 [MP2.0 + 1x1 MP2.1: 8x8] -> C3 [convblock3.0, convblock3.3: 8x8] -> T3 [MP3.0 + 1x1 MP3.1: 4x4] -> C4 [convblock4.0: 1x1]
output: (N, 10) log-probabilities (fine: training's cross-entropy takes logits or log-probabilities alike)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.constraints",
                                description="Check a model against the assignment's rules, judged on the graph that\n"
                                            "one forward pass executes; print the evidence for each rule, what the\n"
                                            "network outputs, and the receptive field after every layer. Exit 1\n"
                                            "when a rule fails, 2 when the model cannot be built.",
                                epilog=HOW + EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help=f"a registered name ({', '.join(list_models())}) or your own FILE.py:NAME "
                                 "or FILE.ipynb:NAME")
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
