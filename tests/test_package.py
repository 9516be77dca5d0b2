"""helpers/__init__.py: one import line for the notebooks, names that Tab completion finds, and no
global side effects when any module is imported (threads, warning filters, logging are the entry
points' business); the sweep, the one part that needs Optuna, is the subpackage helpers/sweep/."""
import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import helpers

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "helpers"
# every module, named as below `helpers.`: "plots", "sweep.study", "sweep.__main__" (a package's __init__.py
# holds only its lazy names)
MODULES = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
                 if p.stem != "__init__")
SWEEP = [m for m in MODULES if m.startswith("sweep.")]
# the modules not reachable as H.<module>: the command-line-only ones, errors and rundir
UNREACHABLE = {"errors", "grade", "pipeline", "rundir", "train", "sweep.__main__"}


def path_of(module: str) -> Path:
    return PACKAGE / (module.replace(".", "/") + ".py")


def test_dir_lists_every_export_and_submodule():
    """Tab completion in a notebook (`H.<Tab>`) shows the names although they load lazily."""
    names = dir(helpers)
    assert {"Trial", "Record", "Recipe", "Settings", "load_run", "plots", "run", "loop", "checkpoint"} <= set(names)
    for name in helpers._WHERE:
        assert getattr(helpers, name) is not None, name
    # every module of the package is reachable as H.<module> (H.sweep.<module>), except the command-line-only ones
    reachable = set(helpers._SUBMODULES) | {f"sweep.{name}" for name in helpers.sweep._SUBMODULES}
    assert set(MODULES) - reachable <= UNREACHABLE
    assert set(helpers.sweep._SUBMODULES) <= set(dir(helpers.sweep))
    for module in sorted(reachable & set(MODULES)):
        owner, _, name = module.rpartition(".")
        assert getattr(importlib.import_module(f"helpers.{owner}") if owner else helpers, name) is \
            importlib.import_module(f"helpers.{module}"), module


def test_importing_any_module_changes_no_global_state():
    """No torch thread count, warning filter or root logging handler set by an import: library code
    leaves those to the entry point that imports it."""
    code = ("import logging, warnings, importlib, torch\n"
            "torch.set_num_threads(1)\n"
            "before = (torch.get_num_threads(), list(warnings.filters), list(logging.getLogger().handlers))\n"
            f"for m in {MODULES!r}:\n"
            "    importlib.import_module('helpers.' + m)\n"
            "after = (torch.get_num_threads(), list(warnings.filters), list(logging.getLogger().handlers))\n"
            "assert after == before, [a for a in after[1] if a not in before[1]] or after\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def imports_of(module: str) -> set:
    """The package's modules `module` imports (relative imports, inside functions too), named as MODULES are:
    in helpers/sweep/study.py, `from ..record import` is "record" and `from .space import` "sweep.space"."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path_of(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) + 1 - node.level]
            names = [node.module] if node.module else [a.name for a in node.names]
            found |= {".".join([*base, name]) for name in names}
    return found


def test_architecture_doc_names_every_module_and_what_it_imports():
    """docs/architecture.md's "may import" column is the code's: a new import shows up here first. A module of
    the subpackage is headed by its path (`sweep/study.py`) and named in the cells as MODULES name it (sweep.study)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    sections = dict(re.findall(r"### `([\w/]+)\.py`\n.*?\n\|---\|---\|\n\|[^\n]*\| ([^|\n]*) \|\n", doc, re.S))
    sections = {path.replace("/", "."): cell for path, cell in sections.items()}
    assert set(sections) == set(MODULES)
    for module, cell in sections.items():
        listed = set() if cell.strip() == "nothing of helpers" else {m.strip() for m in cell.split(",")}
        assert listed == imports_of(module), module


def test_imports_only_go_downwards():
    """No cycle among the package's modules (lazy imports inside functions included)."""
    seen, done = set(), set()

    def visit(module, path):
        assert module not in seen - done, f"import cycle: {' -> '.join(path + [module])}"
        if module in done:
            return
        seen.add(module)
        for dep in imports_of(module):
            visit(dep, path + [module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


def test_only_the_sweep_subpackage_needs_optuna():
    """Optuna is the [sweep] extra (Colab installs it for notebook 05 alone): no code outside helpers/sweep/
    imports it or the subpackage, even inside a function, and helpers, its lazy names and every other module
    import without it."""
    outside = [m for m in MODULES if m not in SWEEP]
    for module in outside:
        tree = ast.parse(path_of(module).read_text())
        absolute = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        absolute |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        assert not {name for name in absolute if name.split(".")[0] == "optuna"
                    or name.startswith("helpers.sweep")}, module
        assert not {m for m in imports_of(module) if m.split(".")[0] == "sweep"}, module
    code = ("import sys; sys.modules['optuna'] = None  # `import optuna` now fails, as where it is not installed\n"
            "import importlib, helpers\n"
            f"for m in {outside!r}:\n"
            "    importlib.import_module('helpers.' + m)\n"
            "for name in [*helpers._WHERE, *dir(helpers)]:\n"
            "    getattr(helpers, name)\n"
            "helpers.sweep.space.load_space  # the subpackage itself and a search space need no Optuna either\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_sweep_modules_import_only_downward():
    """space <- study <- objective <- figures <- the command: none imports one after it (study never needs
    objective, and the figures come from the study, not from a trial)."""
    order = ["sweep.space", "sweep.study", "sweep.objective", "sweep.figures", "sweep.__main__"]
    assert sorted(order) == SWEEP
    for i, module in enumerate(order):
        assert not imports_of(module) & set(order[i + 1:]), module
