"""A sweep's study drawn: its objective per trial and per epoch, what each searched field explains, and the
best trials' curves. Every function returns its matplotlib Figure; study_figure also saves it, the way
helpers/plots.py saves every figure.

The values come from study.py (objective_metric says which split a study optimised, records builds the best
trials' Records), so a figure and the table beside it never disagree.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.style
import optuna

from ..plots import save, summary_plot_for_runs
from .study import objective_metric, records


def _optuna_figure(ax):
    ax = ax.flat[0] if hasattr(ax, "flat") else ax
    fig = ax.figure
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    return fig


def _split(study) -> str:
    """The split a study's values are the accuracy of, in words: "validation", or "test" for a study tuned on
    the test set (--val 0, or made before validation splits existed)."""
    return "validation" if objective_metric(study) == "val_acc" else "test"


def study_history(study):
    """The objective of every finished trial in order, and the best so far (Optuna's plot)."""
    fig = _optuna_figure(optuna.visualization.matplotlib.plot_optimization_history(study))
    fig.axes[0].set_ylabel(f"plain {_split(study)} accuracy")
    return fig


def study_importances(study):
    """How much of the accuracy's variation each searched field explains (Optuna's default evaluator)."""
    return _optuna_figure(optuna.visualization.matplotlib.plot_param_importances(study))


def study_epochs(study):
    """The objective per epoch of every trial, as the pruner saw it: pruned ones stop early (Optuna's
    intermediate values)."""
    fig = _optuna_figure(optuna.visualization.matplotlib.plot_intermediate_values(study))
    ax = fig.axes[0]
    split = _split(study)
    ax.set(xlabel="epoch", ylabel=f"plain {split} accuracy",
           title=f"{split.capitalize()} accuracy per epoch (pruned trials stop early)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.get_legend():
        ax.get_legend().remove()   # one entry per trial: too many to read
    return fig


def study_top_runs(study, top=3):
    """Train and test accuracy per epoch of the best trials, side by side: their Records (study.records)."""
    return summary_plot_for_runs(records(study, top), "acc")


STUDY_PLOTS = {"history": study_history, "importances": study_importances, "epochs": study_epochs,
               "top_runs": study_top_runs}


def study_figure(study, name: str, images_dir=None, prefix="sweep_", top=3):
    """One of the STUDY_PLOTS, saved as IMAGES_DIR/<prefix><name>.png when images_dir is given; None
    (with the reason printed) when Optuna cannot draw it yet, e.g. importances of one trial."""
    draw = STUDY_PLOTS[name] if name != "top_runs" else (lambda s: study_top_runs(s, top))
    # Optuna's plots switch matplotlib to its ggplot style: put back what that style sets, and only that.
    # (Not rc_context: in a notebook whose first figure this is, it would also undo the inline
    # backend's set-up, and no later figure of the session would show.)
    styled = {k: matplotlib.rcParams[k] for k in matplotlib.style.library["ggplot"]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "experimental" notices and few-trials caveats
            fig = draw(study)
    except (ValueError, RuntimeError, KeyError) as e:
        print(f"{name} plot skipped: {e}", file=sys.stderr)
        return None
    finally:
        matplotlib.rcParams.update(styled)
    if images_dir:
        save(fig, Path(images_dir) / f"{prefix}{name}.png")
    return fig


def save_study_plots(study, folder, prefix="sweep_", top=3) -> list[Path]:
    """All the STUDY_PLOTS as PNGs in `folder`."""
    paths = []
    for name in STUDY_PLOTS:
        fig = study_figure(study, name, folder, prefix, top)
        if fig is not None:
            paths.append(Path(folder) / f"{prefix}{name}.png")
            plt.close(fig)
    return paths
