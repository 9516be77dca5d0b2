"""Small constrained CNN for CIFAR-10: model, constraints checker, data, training, plots.

Notebooks use one import line: `import helpers as H`, then H.build_model, H.check, H.Trial ...
Names resolve lazily, so `python -m helpers.train` does not import itself twice.
"""
import importlib

# The GitHub repository the Colab badges and setup cells point at (owner/name).
# Change it with `python -m helpers.pipeline --set-repo OWNER/NAME`: that rewrites this line, every
# notebook's badge and setup cell, and README's links, together.
REPO = "small-cnn-team/cifar10-small-cnn"

_EXPORTS = {
    "constraints": ["check"],
    "device": ["pick_device", "resolve_precision"],
    "data": ["channel_stats", "load_split", "load_splits"],
    "loader": ["Loader"],
    "errors": ["UserError"],
    "model": ["count_params", "params_per_block"],
    "colab": ["in_colab"],
    "notebook": ["check_params", "drive_path", "run_folder", "run_name", "summary", "warn_if_no_gpu"],
    "recipes": ["RECIPES", "Recipe", "Settings", "get_recipe"],
    "registry": ["build_model", "list_models"],
    "loop": ["accuracy", "evaluate", "predict", "select_examples"],
    "record": ["Record", "load_run", "test_loader_for"],
    "run": ["Trainer", "Trial", "recipe_table", "train"],
    "schedule": ["lr_schedule"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
# whole modules reachable as attributes: H.plots.curves(...); the sweep's, which need Optuna, in the subpackage
# helpers/sweep/: H.sweep.study.load_study(...), H.sweep.figures.study_figure(...)
_SUBMODULES = ("augment", "benchmark", "checkpoint", "cli", "colab", "constraints", "data", "device", "diagram",
               "explain", "loader", "loop", "model", "muon", "notebook", "plots", "probe", "recipes", "record",
               "registry", "run", "schedule", "speed", "sweep")
__all__ = sorted(_WHERE) + ["plots", "REPO"]


def __dir__():  # Tab completion in a notebook lists the exports and submodules, though they load lazily
    return sorted({*globals(), *_WHERE, *_SUBMODULES})


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")
