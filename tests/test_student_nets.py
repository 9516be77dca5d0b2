"""The rules judged on networks written the ways students write them (tests/student_nets/), one verdict per
rule each: blocks named anything, pools as modules, reused modules or functions, pools that do nothing,
depthwise convs that are and are not separable, residual stages, logits, log-softmax and softmax heads,
and a Colab notebook."""
from functools import lru_cache
from pathlib import Path

import pytest

from helpers import constraints
from helpers.constraints import check
from helpers.registry import build_model

NETS = Path(__file__).resolve().parent / "student_nets"
PARAMS, POOLS, SEPARABLE, DILATED, STRUCTURE = ("parameters < 1,000,000", "exactly 3 max-pools",
                                                "depthwise-separable conv", "dilated conv",
                                                "ConvBlock -> TransitionBlock structure")
RULES = (PARAMS, POOLS, SEPARABLE, DILATED, STRUCTURE)


def expect(fails=(), output="log-probabilities", shows=()):
    """Every rule's verdict (all pass but `fails`), the output kind, and evidence {rule: [fragments]}."""
    return dict(verdicts={r: r not in fails for r in RULES}, output=output, shows=dict(shows))


EXPECTED = {
    "sequential_blocks.py": expect(shows={STRUCTURE: [
        "stages C1 [convblock1.0, convblock1.4: 32x32] -> T1 [MP1.0 + 1x1 MP1.1: 16x16] -> C2 [convblock2.0, "
        "convblock2.4: 16x16] -> T2 [MP2.0 + 1x1 MP2.1: 8x8] -> C3 [convblock3.0, convblock3.3: 8x8] -> "
        "T3 [MP3.0 + 1x1 MP3.1: 4x4] -> C4 [convblock4.0: 1x1]"]}),
    "reused_pool.py": expect(output="logits", shows={
        POOLS: ["3 max-pool calls reduce the map: pool 32x32->16x16, pool 16x16->8x8, pool 8x8->4x4"],
        STRUCTURE: ["T1 [1x1 convblock2.0 + pool: 16x16] -> C2 [convblock3.0: 16x16]"]}),
    "functional_pools.py": expect(shows={
        POOLS: ["3 max-pool calls reduce the map: F.max_pool2d in forward 32x32->16x16",
                "; F.max_pool2d in forward 32x32->32x32: does not reduce the map, not counted"],
        STRUCTURE: ["C1 [conv1, conv2: 32x32] -> T1 [F.max_pool2d in forward: 16x16]", "-> C4 [conv7: 4x4]"]}),
    "identity_pool.py": expect(fails={POOLS}, shows={
        POOLS: ["2 max-pool calls reduce the map: pool1 32x32->16x16, pool2 16x16->8x8; "
                "pool3 8x8->8x8: does not reduce the map, not counted"]}),
    "dw_then_3x3.py": expect(fails={SEPARABLE}, shows={
        SEPARABLE: ["not a pair: x.dw: feeds a 3x3 conv (x.conv), not a 1x1"]}),
    "dw_through_gap.py": expect(fails={SEPARABLE}, shows={
        SEPARABLE: ["block4.dw: reaches head.fc only through adaptive_avg_pool2d: pooling breaks the pair"],
        STRUCTURE: ["-> C4 [block4.dw, head.fc: 4x4->1x1]"]}),
    "dw_multiplier.py": expect(shows={SEPARABLE: ["layer2.0 -> layer2.1, layer3.0 -> layer3.3"],
                                      # a pair's 1x1 conv stays in its block, though it stands right before a pool
                                      STRUCTURE: ["C2 [layer2.0, layer2.1: 16x16] -> T2 [pool2: 8x8]"]}),
    "grouped_conv.py": expect(fails={SEPARABLE}, shows={
        SEPARABLE: ["conv3.0: a grouped conv (4 groups < 16 input channels), not depthwise"]}),
    "padded_1x1.py": expect(shows={
        POOLS: ["pool1 34x34->17x17, pool2 19x19->9x9, pool3 11x11->5x5"],
        STRUCTURE: ["C3 [convblock3.0.0, convblock3.1.0: 9x9->11x11] -> T3 [pool3: 5x5] -> C4 [convblock4.0: 7x7]"]}),
    "residual.py": expect(output="logits", shows={
        STRUCTURE: ["C2 [layer2.conv1, layer2.conv2, layer2.shortcut: 16x16] -> T2 [pool: 8x8]"],
        SEPARABLE: ["layer3.conv1.0 -> layer3.conv1.3"]}),
    "softmax_head.py": expect(output="probabilities", shows={
        STRUCTURE: ["C1 [model[0], model[2]: 32x32] -> T1 [model[4]: 16x16]"],
        SEPARABLE: ["model[8] -> model[10]"]}),
    "pools_side_by_side.py": expect(fails={STRUCTURE}, shows={
        STRUCTURE: ["T1 [pool1: 16x16] -> T2 [pool2: 8x8]", "; T2 follows T1 with no conv block between"]}),
    "pool_first.py": expect(fails={STRUCTURE}, output="logits", shows={
        STRUCTURE: ["stages T1 [pool: 16x16] -> C2", "; T1 comes first: no conv block before it"]}),
    "only_1x1_between.py": expect(fails={STRUCTURE}, shows={
        STRUCTURE: ["C3 [convblock3.0: 8x8] -> T3 [1x1 convblock3.2 + transblock3.0: 4x4]",
                    "; C3 has no spatial (k > 1) conv before T3, only 1x1 convs"]}),
    "colab_notebook.ipynb": expect(shows={STRUCTURE: ["C1 [convblock1.0, convblock1.4: 32x32] -> T1 [pool1: 16x16]"]}),
}


@lru_cache(maxsize=None)
def report(file):
    return check(build_model(f"{NETS / file}:Net"))


def test_every_network_in_the_folder_has_its_expectations():
    assert {p.name for p in NETS.iterdir() if p.suffix in (".py", ".ipynb")} == set(EXPECTED)
    assert len(EXPECTED) >= 13


@pytest.mark.parametrize("file, rule", [(f, r) for f in EXPECTED for r in RULES],
                         ids=[f"{f}-{r}" for f in EXPECTED for r in RULES])
def test_each_rule_verdict(file, rule):
    verdict = next(r for r in report(file).rules if r.name == rule)
    assert verdict.passed == EXPECTED[file]["verdicts"][rule], verdict.evidence
    for fragment in EXPECTED[file]["shows"].get(rule, ()):
        assert fragment in verdict.evidence


@pytest.mark.parametrize("file", EXPECTED)
def test_output_kind(file):
    r = report(file)
    assert (r.output, r.output_shape) == (EXPECTED[file]["output"], (1, 10))
    line = str(r).splitlines()[len(r.rules)]
    assert line.startswith(f"output: (N, 10) {r.output} (")
    assert ("training refuses" in line) == (r.output == "probabilities")


def test_the_documented_example_is_the_checkers_report():
    """The report quoted in README.md and in --help is what the checker says of sequential_blocks.py."""
    r = report("sequential_blocks.py")
    text = r.rules_text() + "\n" + r.output_text() + "\n"
    assert constraints.EXAMPLE == text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert text in readme
