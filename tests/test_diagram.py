"""The architecture diagram must show every layer the rule checker saw, and its CLI must behave."""
import matplotlib

matplotlib.use("Agg")  # headless, as in CI

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from helpers import diagram, model as M, registry as R  # noqa: E402
from helpers.constraints import check, trace  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def texts(fig, gid=None):
    return [t.get_text() for t in fig.findobj(Text) if gid is None or t.get_gid() == gid]


def counts(ops):
    """What the tracer saw, counted here independently of the diagram code."""
    convs = [o for o in ops if o.kind == "conv"]
    separable = sum(1 for a, b in zip(convs, convs[1:])
                    if a.groups == a.in_channels > 1 and b.kernel == 1 and b.in_channels == a.out_channels)
    return dict(maxpool=sum(o.kind == "maxpool" for o in ops),
                dilated=sum(o.dilation > 1 and o.kernel > 1 for o in convs),
                separable=separable, rows=len(ops) - separable)


@pytest.mark.parametrize("name", R.list_models())
def test_diagram_shows_every_traced_layer(name):
    net = R.build_model(name)
    ops = trace(net)
    fig = diagram.draw_architecture(net, title=name)
    assert isinstance(fig, Figure)

    layers, want = texts(fig, "layer"), counts(ops)
    assert len(layers) == want["rows"] + 1  # + the input image row
    assert sum("max-pool" in t for t in layers) == want["maxpool"] == 3
    assert sum("dilation" in t for t in layers) == want["dilated"] >= 1
    assert sum("depthwise" in t and "pointwise" in t for t in layers) == want["separable"] >= 1

    every = " ".join(texts(fig))
    for stage in {o.module.split(".")[0] for o in ops}:
        assert stage in every
    assert "ConvBlock" in every and "TransitionBlock" in every
    assert name in every and f"{M.count_params(net):,}" in every
    # rows are in execution order: the last RF is the network's, the last shape its output
    assert int(texts(fig, "rf")[-1]) == check(net).final_receptive_field
    assert texts(fig, "shape")[-1] == "×".join(map(str, ops[-1].out_shape))


def test_diagram_says_which_rule_fails():
    s = [M.ConvReLUBN(3, 16), M.ConvBlock([16, 16], dilation=2), M.TransitionBlock(16),
         M.ConvBlock([16, 16], conv=M.DepthwiseSeparableConv), M.TransitionBlock(16)]
    net = M.Net(**{f"s{i}": m for i, m in enumerate(s)}, head=M.Head(16))  # two max-pools only
    every = " ".join(texts(diagram.draw_architecture(net)))
    assert "FAILS" in every and "exactly 3 max-pools" in every


def test_cli_writes_png(tmp_path):
    out = tmp_path / "sub" / "arch.png"
    assert diagram.main(["fast", "--out", str(out), "--dpi", "40"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []  # the CLI closes what it saved


def test_cli_rejects_unknown_model(tmp_path, capsys):
    assert diagram.main(["resnet9000", "--out", str(tmp_path / "x.png")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resnet9000" in err and "seed" in err
    assert not (tmp_path / "x.png").exists()


def test_image_path_keeps_models_apart():
    assert diagram.image_path("seed") == "images/model_architecture.png"  # the README's picture
    assert diagram.image_path("wide", "out") == "out/model_architecture_wide.png"


@pytest.mark.parametrize("argv, message", [(["--dpi", "0"], "--dpi must be between 20 and 600, got 0"),
                                           (["--dpi", "100000"], "--dpi must be between 20 and 600"),
                                           (["--out", "x.txt"], "the file name must end in one of")])
def test_bad_dpi_or_file_type_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        diagram.main(["fast", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not any("Traceback" in line for line in err)


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert diagram.main(["fast", "--out", str(tmp_path / "f" / "a.png")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_a_students_sequential_blocks_are_boxed_as_the_stages_the_checker_read():
    """Blocks named convblockN / MPN (nn.Sequential, no helpers' classes) are drawn as ConvBlocks and
    TransitionBlocks: the boxes follow the stages read from the graph, not the class names."""
    from pathlib import Path

    spec = f"{Path(__file__).resolve().parent / 'student_nets' / 'sequential_blocks.py'}:Net"
    fig = diagram.draw_architecture(R.build_model(spec))
    titles = [t for t in texts(fig) if "  ·  " in t and "parameters" not in t]
    assert titles == ["C1  ·  ConvBlock  ·  convblock1", "T1  ·  TransitionBlock  ·  MP1",
                      "C2  ·  ConvBlock  ·  convblock2", "T2  ·  TransitionBlock  ·  MP2",
                      "C3  ·  ConvBlock  ·  convblock3", "T3  ·  TransitionBlock  ·  MP3",
                      "C4  ·  head  ·  gap, convblock4"]  # the global average pool opens the head
    layers = texts(fig, "layer")
    assert layers.count("max-pool 2×2") == 3 and "depthwise 3×3 + pointwise 1×1" in layers
