"""helpers/sweep/figures.py: a study's figures name the split it optimised on their axes, show the best trials'
Records as study.records builds them, and leave matplotlib as they found it."""
import matplotlib
import matplotlib.pyplot as plt
import pytest

from conftest import study_of
from helpers.sweep import figures
from helpers.sweep import study as st


@pytest.mark.parametrize("val, split", [(0.1, "validation"), (0, "test"), (None, "test")])
def test_the_figures_axes_name_the_split_the_study_optimised(val, split):
    """A validation split (--val 0.1) is what the figures show; --val 0, and a study from before validation
    splits (no val in its settings, as the published fast-lr-wd-ls), tuned on test accuracy."""
    settings = dict(recipe="fast", data="synthetic", seed=0) | ({} if val is None else dict(val=val))
    study = study_of(settings)
    for name in ("history", "epochs"):
        fig = figures.study_figure(study, name)
        assert fig.axes[0].get_ylabel() == f"plain {split} accuracy"
        plt.close(fig)


def test_the_published_study_draws_on_test_accuracy():
    """Notebook 05's defaults: the study shipped in helpers/studies/, made before validation splits existed."""
    study = st.load_study("fast-lr-wd-ls", root="/nonexistent", log=lambda m: None)
    for name in ("history", "epochs"):
        fig = figures.study_figure(study, name)
        assert fig.axes[0].get_ylabel() == "plain test accuracy"
        plt.close(fig)


def test_figures_leave_matplotlib_as_they_found_it():
    study = st.load_study("fast-lr-wd-ls", root="/nonexistent", log=lambda m: None)
    before = dict(matplotlib.rcParams)
    for name in figures.STUDY_PLOTS:
        plt.close(figures.study_figure(study, name))
    assert {k: v for k, v in matplotlib.rcParams.items() if before[k] != v} == {}  # no ggplot style left


def test_the_top_runs_figure_shows_the_records_of_the_best_trials():
    study = st.load_study("fast-lr-wd-ls", root="/nonexistent", log=lambda m: None)
    fig = figures.study_top_runs(study, top=3)
    shown = [line.get_label() for line in fig.axes[1].get_lines()]   # the test-accuracy panel
    assert shown == [r.name for r in st.records(study, 3)] and len(shown) == 3
    plt.close(fig)


def test_save_study_plots_writes_one_png_per_figure(tmp_path):
    study = st.load_study("fast-lr-wd-ls", root="/nonexistent", log=lambda m: None)
    paths = figures.save_study_plots(study, tmp_path, prefix="x_")
    assert sorted(p.name for p in paths) == sorted(f"x_{name}.png" for name in figures.STUDY_PLOTS)
    assert all(p.is_file() for p in paths)
