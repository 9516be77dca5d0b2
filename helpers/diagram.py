"""The architecture picture, drawn from the model itself.

    python -m helpers.diagram seed                 # -> images/model_architecture.png
    python -m helpers.diagram fast --out arch.png  # any registered model, any path
    python -m helpers.diagram mynet.py:MyNet       # your own network (helpers/registry.py)

Why draw from a traced forward pass (helpers.constraints.check) rather than by hand:
the picture then shows exactly the layers the rule checker judged, boxed in the stages it
read from the graph (so a network of nn.Sequential blocks named anything is drawn as its
ConvBlocks and TransitionBlocks), with the shapes and receptive fields it computed, and it
cannot go stale when a model changes.

Reads small to large: what one row says (`Row`, `layer_rows`), then the drawing
(`draw_architecture`), then the command line.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, Patch

from .constraints import check, receptive_field
from .registry import build_model, file_label, is_file_spec, list_models

DPI = 130  # the committed PNGs: ~900 px wide, legible on GitHub without zooming

# the three layers the assignment asks for, each with one colour used for its row tint,
# its marker and its legend entry
MARKS = {
    "maxpool": ("#d62728", "max-pool (halves H×W)"),
    "dilated": ("#2a9d3a", "dilated conv"),
    "separable": ("#7b4fc9", "depthwise-separable conv"),
}
# stage boxes: pale fills, so the saturated marks above stand out on top of them
STAGE_FILL = {"ConvBlock": "#dcebf8", "TransitionBlock": "#fde4c8", "input": "#ececec", "head": "#fbf3c4"}
STAGE_EDGE = {"ConvBlock": "#4a7fb5", "TransitionBlock": "#d98a2b", "input": "#8a8a8a", "head": "#b59b1f"}
MODULES_SHOWN = 4  # top-level module names in a stage's title, then "+N"


# --------------------------------------------------------------------------- rows

@dataclass
class Row:
    """One line of the diagram: a traced layer (a depthwise conv and its 1x1 count as one)."""
    stage: int     # index into the checker's Report.stages
    label: str     # "conv 3×3 dilation 2", "max-pool 2×2", ...
    shape: tuple   # output (C, H, W)
    rf: int        # receptive field after this layer, in input pixels
    marks: tuple   # subset of MARKS keys


def _conv_label(op) -> str:
    label = f"{op.kernel}×{op.kernel}"
    if op.dilation > 1:
        label += f" dilation {op.dilation}"
    if op.stride > 1:
        label += f" stride {op.stride}"
    return label


def layer_rows(ops, pairs=(), stages=()) -> list[Row]:
    """Turn traced ops into diagram rows, each tagged with the index of the checker's stage it belongs to.

    `pairs`: the checker's depthwise-separable pairs (Report.separable). A pair whose 1x1 conv runs right
    after its depthwise conv, in the same stage, is one row; otherwise both rows are marked separable.
    `stages`: the checker's Report.stages (without them every row is in stage 0).
    """
    rfs = [r[3] for r in receptive_field(ops)]
    stage_of = {i: s for s, stage in enumerate(stages) for i in stage.ops}
    partner = dict(pairs)
    paired = set(partner) | set(partner.values())
    rows, i = [], 0
    while i < len(ops):
        op, stage = ops[i], stage_of.get(i, 0)
        marks = ("dilated",) if op.kind == "conv" and op.dilation > 1 and op.kernel > 1 else ()
        if partner.get(i) == i + 1 and stage_of.get(i + 1, 0) == stage:
            rows.append(Row(stage, f"depthwise {_conv_label(op)} + pointwise 1×1", ops[i + 1].out_shape, rfs[i + 1],
                            marks + ("separable",)))
            i += 2
            continue
        if op.kind == "conv":
            depthwise = op.groups == op.in_channels > 1
            label = f"{'depthwise ' if depthwise else 'grouped ' if op.groups > 1 else ''}conv {_conv_label(op)}"
            marks += ("separable",) if i in paired else ()
        else:  # a pool whose window covers its whole input is a global pool
            name = "max-pool" if op.kind == "maxpool" else "avg-pool"
            label = f"{name} {op.kernel}×{op.kernel}" + (" (global)" if op.out_shape[1:] == (1, 1) else "")
            counted = op.kind == "maxpool" and op.reduces
            if op.kind == "maxpool" and not counted:
                label += " (keeps the map: not counted)"
            marks = ("maxpool",) if counted else ()
        rows.append(Row(stage, label, op.out_shape, rfs[i], marks))
        i += 1
    return rows


def _stage_kind(stage, is_last) -> str:
    # the stage after the last transition with no spatial conv in it is the classifier: the head
    if stage.kind == "ConvBlock" and is_last and not stage.spatial:
        return "head"
    return stage.kind


def _stage_title(model, stage, kind, ops) -> str:
    tops = list(dict.fromkeys(ops[i].module.split(".")[0] or "forward" for i in stage.ops))
    shown = ", ".join(tops[:MODULES_SHOWN]) + (f" +{len(tops) - MODULES_SHOWN}" if len(tops) > MODULES_SHOWN else "")
    detail = kind
    children = dict(model.named_children())
    if any(getattr(children.get(t), "residual", False) is True for t in tops):
        detail += ", residual"
    return f"{stage.name}  ·  {detail}  ·  {shown}"


def _groups(rows):
    """Consecutive rows of the same stage, in execution order."""
    out = []
    for row in rows:
        if out and out[-1][0] == row.stage:
            out[-1][1].append(row)
        else:
            out.append((row.stage, [row]))
    return out


def _fmt_shape(shape) -> str:
    return "×".join(map(str, shape))


# --------------------------------------------------------------------------- drawing

# layout, in inches: the axes span the figure with 1 data unit = 1 inch, so font sizes and
# spacings below can be reasoned about together
WIDTH = 7.4
ROW_H, HEAD_H, PAD, GAP = 0.27, 0.32, 0.07, 0.24
BOX_X0, BOX_X1 = 0.3, WIDTH - 0.3
COL_MARK, COL_OP, COL_SHAPE, COL_RF = 0.52, 0.7, 5.55, 6.85  # op left-, shape centre-, RF right-aligned
FONT = 10


def draw_architecture(model, title=None, input_size=(1, 3, 32, 32)):
    """A block diagram of `model`: one box per stage the rule checker read from the graph
    (ConvBlock C1, TransitionBlock T1, ..., the head), titled with the top-level modules that ran
    in it, one row per traced layer with its output C×H×W and receptive field; max-pools,
    dilated and depthwise-separable layers marked. Returns the Figure.

    `title`: shown above the diagram (e.g. the registered model name); defaults to the
    model's class name. Nothing is shown or saved here: display or save the Figure.
    """
    report = check(model, input_size)
    ops = report.ops
    rows = layer_rows(ops, report.separable, report.stages)
    groups = _groups(rows)

    n_rows = len(rows) + 1  # + the input image
    body = (len(groups) + 1) * (HEAD_H + 2 * PAD + GAP) + n_rows * ROW_H
    top, bottom = 0.95, 0.55  # title block; legend
    height = top + 0.3 + body + bottom
    fig = plt.figure(figsize=(WIDTH, height))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(height, 0)  # y grows downward, like reading
    ax.axis("off")

    # title: what the model is and whether it obeys the rules
    failed = [r.name for r in report.rules if not r.passed]
    verdict = (f"all {len(report.rules)} rules pass ✓" if not failed
               else f"FAILS: {'; '.join(failed)}")
    ax.text(WIDTH / 2, 0.32, title or type(model).__name__, ha="center", va="center", fontsize=15,
            fontweight="bold")
    ax.text(WIDTH / 2, 0.68, f"{report.params:,} parameters  ·  final receptive field "
            f"{report.final_receptive_field} px  ·  {verdict}", ha="center", va="center", fontsize=FONT,
            color="#1b7a2e" if not failed else "#c0161b")

    # column headings
    y = top + 0.15
    for x, text, ha in ((COL_OP, "layer", "left"), (COL_SHAPE, "output C×H×W", "center"),
                        (COL_RF, "RF (px)", "right")):
        ax.text(x, y, text, ha=ha, va="center", fontsize=FONT - 1, color="#555555", style="italic")
    y = top + 0.3

    image = ((None, [Row(-1, "image", tuple(input_size[1:]), 1, ())]),)
    for k, (stage, stage_rows) in enumerate(image + tuple(groups)):
        if k == 0:
            kind, title_text = "input", "input"
        else:
            kind = _stage_kind(report.stages[stage], stage == len(report.stages) - 1)
            title_text = _stage_title(model, report.stages[stage], kind, ops)
        h = HEAD_H + len(stage_rows) * ROW_H + 2 * PAD
        ax.add_patch(FancyBboxPatch((BOX_X0, y), BOX_X1 - BOX_X0, h, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor=STAGE_FILL[kind], edgecolor=STAGE_EDGE[kind], linewidth=1.3))
        ax.text(BOX_X0 + 0.14, y + PAD + HEAD_H / 2, title_text, ha="left", va="center", fontsize=FONT,
                fontweight="bold", color="#222222")
        ry = y + PAD + HEAD_H
        for row in stage_rows:
            cy = ry + ROW_H / 2
            if row.marks:
                color = MARKS[row.marks[-1]][0]
                ax.add_patch(FancyBboxPatch((BOX_X0 + 0.08, ry + 0.025), BOX_X1 - BOX_X0 - 0.16, ROW_H - 0.05,
                                            boxstyle="round,pad=0,rounding_size=0.05", facecolor=color,
                                            alpha=0.16, edgecolor="none"))
                for j, mark in enumerate(row.marks):  # a depthwise conv may be dilated too: two dots
                    ax.plot(COL_MARK + 0.11 * (j - (len(row.marks) - 1) / 2), cy, "o", color=MARKS[mark][0],
                            markersize=6.5)
            # gid "layer": lets tests (and anyone inspecting the figure) find the layer rows
            ax.text(COL_OP, cy, row.label, ha="left", va="center", fontsize=FONT, gid="layer")
            ax.text(COL_SHAPE, cy, _fmt_shape(row.shape), ha="center", va="center", fontsize=FONT,
                    family="monospace", gid="shape")
            ax.text(COL_RF, cy, str(row.rf), ha="right", va="center", fontsize=FONT, family="monospace",
                    gid="rf")
            ry += ROW_H
        y += h
        if k < len(groups):  # an arrow down to the next stage
            ax.annotate("", xy=(WIDTH / 2, y + GAP - 0.02), xytext=(WIDTH / 2, y + 0.02),
                        arrowprops=dict(arrowstyle="-|>", color="#666666", lw=1.2, mutation_scale=11))
            y += GAP

    # two legend rows: the marked layers, then the stage kinds
    marks = [Line2D([], [], marker="o", linestyle="", color=c, markersize=7, label=t) for c, t in MARKS.values()]
    kinds = [Patch(facecolor=STAGE_FILL[k], edgecolor=STAGE_EDGE[k], label=k) for k in ("ConvBlock", "TransitionBlock")]
    for handles, y_in in ((marks, 0.4), (kinds, 0.15)):
        fig.legend(handles=handles, loc="center", bbox_to_anchor=(0.5, y_in / height), ncol=len(handles),
                   fontsize=FONT - 1, frameon=False, handlelength=1.2, columnspacing=1.6)
    return fig


# --------------------------------------------------------------------------- command line

def image_path(name: str, images_dir="images") -> str:
    """Where a model's picture goes: model_architecture.png for seed (the original solution),
    model_architecture_NAME.png for the others (NAME alone for your FILE.py:NAME), so one model's
    picture never overwrites another's."""
    if is_file_spec(name):
        name = file_label(name)
    return f"{images_dir}/model_architecture{'' if name == 'seed' else '_' + name}.png"


SAVE_FORMATS = {".png", ".pdf", ".svg", ".jpg", ".jpeg"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m helpers.diagram",
        description="Draw a model's architecture (stages, layers, output shapes, receptive "
                    "fields) to a PNG.")
    p.add_argument("model", help=f"a registered model ({', '.join(list_models())}) or your own FILE.py:NAME "
                                 "or FILE.ipynb:NAME")
    p.add_argument("--out", help="output path (default: images/model_architecture.png for seed, "
                                 "images/model_architecture_MODEL.png otherwise)")
    p.add_argument("--dpi", type=int, default=DPI, help=f"resolution, 20 to 600 (default {DPI})")
    args = p.parse_args(argv)
    if not 20 <= args.dpi <= 600:  # 0 crashes matplotlib; 100000 asks for a gigapixel image
        p.error(f"--dpi must be between 20 and 600, got {args.dpi}")
    if args.out and Path(args.out).suffix.lower() not in SAVE_FORMATS:
        p.error(f"--out {args.out}: the file name must end in one of {', '.join(sorted(SAVE_FORMATS))}")
    try:
        model = build_model(args.model)
    except ValueError as e:  # one line that names the fix
        print(f"error: {e} (e.g. python -m helpers.diagram seed)", file=sys.stderr)
        return 2
    out = Path(args.out or image_path(args.model))
    fig = draw_architecture(model, title=args.model)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=args.dpi, bbox_inches="tight", facecolor="white")
    except OSError as e:
        print(f"error: cannot write {out} ({e.strerror or e}): choose another --out", file=sys.stderr)
        return 2
    finally:
        plt.close(fig)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
