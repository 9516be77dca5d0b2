"""Optuna sweeps over recipes: the one part of helpers that needs Optuna (the `[sweep]` extra).

    space.py      the search space: which recipe fields a study samples, and how
    study.py      the study: its storage (SQLite, PostgreSQL, a copy on Google Drive) and its results
    objective.py  one trial trains one `Trial`
    figures.py    the study's figures
    __main__.py   the command, `python -m helpers.sweep`

Each imports only those above it. The modules load lazily (H.sweep.study.load_study(...)), so importing
this package, or anything else of helpers, needs no Optuna; nor does reading a search space (space.py).
"""
import importlib

_SUBMODULES = ("figures", "objective", "space", "study")


def __dir__():  # Tab completion lists the modules, though they load lazily
    return sorted({*globals(), *_SUBMODULES})


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'helpers.sweep' has no attribute {name!r}")
