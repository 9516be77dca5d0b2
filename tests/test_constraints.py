"""The checker must pass the real models and reject models built to break each rule."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import constraints, model as M, registry as R
from helpers.constraints import check, receptive_field, trace


def net(*stages, head=None):
    return M.Net(**{f"s{i}": s for i, s in enumerate(stages)}, head=head or M.Head(32))


def good_stages():
    return [
        M.ConvReLUBN(3, 32),
        M.ConvBlock([32, 32], dilation=2), M.TransitionBlock(32),
        M.ConvBlock([32, 32], conv=M.DepthwiseSeparableConv), M.TransitionBlock(32),
        M.ConvBlock([32, 32]), M.TransitionBlock(32),
    ]


def failed(report):
    return {r.name for r in report.rules if not r.passed}


def test_reference_model_passes():
    assert check(net(*good_stages())).passed


def test_too_many_parameters():
    s = good_stages()
    s[-2] = M.ConvBlock([32, 512, 512, 32])  # ~2.4 M weights
    assert failed(check(net(*s))) == {"parameters < 1,000,000"}


def test_four_max_pools():
    s = good_stages() + [M.ConvBlock([32, 32]), M.TransitionBlock(32)]
    assert failed(check(net(*s))) == {"exactly 3 max-pools"}


def test_two_max_pools():
    s = good_stages()[:-2]
    assert failed(check(net(*s))) == {"exactly 3 max-pools"}


class MaxHead(nn.Module):
    """A global max-pool head: a fourth max-pool in disguise."""
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        return F.log_softmax(self.fc(self.pool(x)).flatten(1), 1)


def test_global_max_pool_head_counts():
    report = check(net(*good_stages(), head=MaxHead()))
    assert "exactly 3 max-pools" in failed(report)


class SneakyBlock(M.ConvBlock):
    """A functional max-pool hidden inside a ConvBlock's forward."""
    def forward(self, x):
        return F.max_pool2d(super().forward(x), 2)


def structure(report):
    return next(r for r in report.rules if r.name == "ConvBlock -> TransitionBlock structure")


def test_functional_max_pool_counts_and_is_a_transition_wherever_it_runs():
    s = good_stages()
    s[-2] = SneakyBlock([32, 32])  # its pool is T3, so the TransitionBlock's pool right after it is T4
    report = check(net(*s))
    assert failed(report) == {"exactly 3 max-pools", "ConvBlock -> TransitionBlock structure"}
    assert "T3 [F.max_pool2d in s5: 4x4] -> T4 [s6.pool: 2x2]" in structure(report).evidence
    assert structure(report).evidence.endswith("; T4 follows T3 with no conv block between")


def test_registered_but_unused_pool_does_not_count():
    head = M.Head(32)
    head.spare = nn.MaxPool2d(2)  # registered, never called by Head.forward
    assert check(net(*good_stages(), head=head)).passed


def test_no_depthwise_separable():
    s = good_stages()
    s[3] = M.ConvBlock([32, 32])
    assert failed(check(net(*s))) == {"depthwise-separable conv"}


def test_grouped_conv_without_pointwise_is_not_separable():
    s = good_stages()
    s[3] = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU())
    s[3].__class__ = type("GroupedOnly", (M.ConvBlock,), {"forward": nn.Sequential.forward})
    assert "depthwise-separable conv" in failed(check(net(*s)))


def test_no_dilation():
    s = good_stages()
    s[1] = M.ConvBlock([32, 32])
    assert failed(check(net(*s))) == {"dilated conv"}


def test_a_bare_pool_after_conv_blocks_is_a_transition():
    # no TransitionBlock class around it: the graph still reads conv block -> max-pool
    s = good_stages()
    s[-1] = M.ConvBlock([32, 32])
    s.append(nn.MaxPool2d(2))
    report = check(net(*s))
    assert report.passed, report.rules_text()
    assert "C3 [s5.0.conv, s6.0.conv: 8x8] -> T3 [s7: 4x4]" in structure(report).evidence


def test_transition_without_conv_block_before_it():
    s = good_stages()
    s = [M.TransitionBlock(3)] + s[:2] + s[3:]  # the image is pooled before any conv
    report = check(net(*s))
    assert failed(report) == {"ConvBlock -> TransitionBlock structure"}
    assert structure(report).evidence.startswith("stages T1 [s0.pool: 16x16] -> C2 [s1.conv, ")
    assert structure(report).evidence.endswith("; T1 comes first: no conv block before it")


def test_receptive_field_arithmetic():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                          nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=2, dilation=2))
    rows = receptive_field(trace(model))
    assert [r[3] for r in rows] == [3, 5, 6, 14]   # 1+2, +2, +1, +(5-1)*2
    assert [r[4] for r in rows] == [1, 1, 2, 2]


def test_seed_final_receptive_field():
    assert check(R.build_model("seed")).final_receptive_field >= 32


def test_cli_exit_codes(monkeypatch, capsys):
    assert constraints.main(["seed"]) == 0
    assert "final receptive field" in capsys.readouterr().out
    monkeypatch.setitem(M.MODELS, "broken", lambda: net(*good_stages()[:-2]))
    assert constraints.main(["broken"]) == 1
    assert "[FAIL] exactly 3 max-pools" in capsys.readouterr().out


# --------------------------------------------------------------------------- a student's own stages

class MyStage(M.ConvBlock):
    """A subclass of ConvBlock, as a student would write a stage."""


class MyTransition(M.TransitionBlock):
    """A TransitionBlock subclass whose pool is a functional call inside its own forward."""
    def forward(self, x):
        return F.max_pool2d(x, 2)


class ConvBlock(nn.Module):
    """Plain torch, the original solution's way: a stage class named ConvBlock ..."""
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=kw.get("dilation", 1), **kw)

    def forward(self, x):
        return torch.relu(self.conv(x))


class TransitionBlock(nn.Module):
    """... and one named TransitionBlock."""
    def forward(self, x):
        return F.max_pool2d(x, 2)


def test_subclassed_stages_are_judged_like_the_package_blocks():
    report = check(net(M.ConvReLUBN(3, 32), MyStage([32, 32], dilation=2), MyTransition(32),
                       MyStage([32, 32], conv=M.DepthwiseSeparableConv), MyTransition(32),
                       MyStage([32, 32]), M.TransitionBlock(32)))
    assert report.passed, report.rules_text()
    assert [s.name for s in report.stages] == ["C1", "T1", "C2", "T2", "C3", "T3", "C4"]
    assert structure(report).evidence.startswith("stages C1 [s0.conv, s1.0.conv: 32x32] -> T1 [F.max_pool2d in s2: "
                                                 "16x16] -> C2 [s3.0.conv.depthwise, s3.0.conv.pointwise: 16x16]")


def test_plain_torch_stages_named_so_count():
    class Separable(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw, self.pw = nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 32, 1)

        def forward(self, x):
            return self.pw(self.dw(x))

    stages = [ConvBlock(3, 32), TransitionBlock(), ConvBlock(32, 32, dilation=2), TransitionBlock(),
              nn.Sequential(Separable()), TransitionBlock()]
    stages[4].__class__ = type("ConvBlock", (nn.Sequential,), {})  # a Sequential stage named ConvBlock
    assert check(net(*stages)).passed


def test_a_functional_pool_in_a_stage_forward_counts_where_it_runs():
    s = good_stages()
    s[-1] = MyTransition(32)  # the third pool: functional, inside a TransitionBlock subclass
    assert check(net(*s)).passed
    s[-2] = SneakyBlock([32, 32])  # and one more, inside a ConvBlock: 4 pools, one outside a transition
    assert failed(check(net(*s))) == {"exactly 3 max-pools", "ConvBlock -> TransitionBlock structure"}


def test_a_factory_is_checked_like_a_class():
    def factory():
        return net(*good_stages())

    assert check(R.build_model(factory)).passed


def test_require_names_every_broken_rule_in_one_line():
    report = check(net(*good_stages()[:-2]))
    with pytest.raises(constraints.RuleError, match=r"^mine breaks the assignment's rules: exactly 3 max-pools "
                                                    r"\(2 max-pool calls reduce the map: s2.pool 32x32->16x16, "
                                                    r"s4.pool 16x16->8x8\)\. The full report: "
                                                    r"python -m helpers.constraints mine$"):
        report.require("mine")
    check(net(*good_stages())).require("fine")  # nothing raised


def test_readme_counts_and_names_the_checkers_rules():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    names = [r.name for r in check(R.build_model("seed")).rules]
    words = {4: "four", 5: "five", 6: "six"}
    assert f"judges {words[len(names)]} rules" in readme
    for name in names:
        assert f"\n| {name} |" in readme, name


# --------------------------------------------------------------------------- read from the graph

def test_global_max_pool_head_is_listed_with_the_map_it_reduces():
    report = check(net(*good_stages(), head=MaxHead()))
    pools = next(r for r in report.rules if r.name == "exactly 3 max-pools")
    assert pools.evidence.startswith("4 max-pool calls reduce the map") and "head.pool 4x4->1x1" in pools.evidence


def test_a_pool_whose_padding_cancels_its_stride_is_not_counted():
    s = good_stages()
    s.insert(1, nn.MaxPool2d(3, stride=1, padding=1))  # a smoothing pool: 32x32 in, 32x32 out
    report = check(net(*s))
    assert report.passed, report.rules_text()
    assert "; s1 32x32->32x32: does not reduce the map, not counted" in report.rules_text()


class Pair(nn.Module):
    """depthwise -> BatchNorm -> ReLU(inplace) -> Dropout -> 1x1, optionally with the input added before the 1x1."""
    def __init__(self, add=False):
        super().__init__()
        self.dw, self.bn = nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32)
        self.act, self.drop, self.pw = nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Conv2d(32, 32, 1)
        self.add = add

    def forward(self, x):
        y = self.drop(self.act(self.bn(self.dw(x))))
        return self.pw(y + x if self.add else y)


@pytest.mark.parametrize("add, passes", [(False, True), (True, False)])
def test_a_pair_is_followed_through_in_place_ops_and_broken_by_an_add(add, passes):
    s = good_stages()
    s[3] = Pair(add)  # the only depthwise conv
    rule = next(r for r in check(net(*s)).rules if r.name == "depthwise-separable conv")
    assert rule.passed == passes, rule.evidence
    if add:
        assert rule.evidence.endswith("not a pair: s3.dw: reaches s3.pw only through add: add breaks the pair")
    else:
        assert rule.evidence == "1 depthwise conv(s) reaching a 1x1 conv: s3.dw -> s3.pw"


class Scores(nn.Module):
    """Returns what the test asks for: logits, log-probabilities, probabilities, or (N, 10, 1, 1) logits."""
    def __init__(self, kind):
        super().__init__()
        self.conv, self.kind = nn.Conv2d(3, 10, 32), kind

    def forward(self, x):
        x = self.conv(x)
        if self.kind == "4-D":
            return x
        x = x.flatten(1)
        return {"logits": x, "log-probabilities": F.log_softmax(x, 1), "probabilities": F.softmax(x, 1)}[self.kind]


@pytest.mark.parametrize("kind, output, shape, says", [
    ("logits", "logits", (1, 10), "output: (N, 10) logits (fine: training's cross-entropy takes logits"),
    ("log-probabilities", "log-probabilities", (1, 10), "output: (N, 10) log-probabilities (fine:"),
    ("probabilities", "probabilities", (1, 10), "output: (N, 10) probabilities (a softmax head, which training refuses"),
    ("4-D", "logits", (1, 10, 1, 1), "output: (N, 10, 1, 1) logits (fine: training's cross-entropy takes logits or "
                                     "log-probabilities alike); but it is 4-D, not (N, classes): flatten it"),
])
def test_the_output_kind_is_judged_from_the_traced_output(kind, output, shape, says):
    report = check(Scores(kind))
    assert (report.output, report.output_shape) == (output, shape)
    assert says in str(report).splitlines()[len(report.rules)]


def test_help_says_how_each_rule_is_read(capsys):
    with pytest.raises(SystemExit):
        constraints.main(["--help"])
    out = capsys.readouterr().out
    for rule in ("exactly 3 max-pools", "depthwise-separable conv", "ConvBlock -> TransitionBlock", "FILE.ipynb:NAME"):
        assert rule in out
    assert constraints.EXAMPLE in out
