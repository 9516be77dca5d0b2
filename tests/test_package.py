"""helpers/__init__.py: one import line for the notebooks, names that Tab completion finds, and no
global side effects when any module is imported (threads, warning filters, logging are the entry
points' business)."""
import re
import subprocess
import sys
from pathlib import Path

import helpers

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "helpers").glob("*.py") if p.stem != "__init__")


def test_dir_lists_every_export_and_submodule():
    """Tab completion in a notebook (`H.<Tab>`) shows the names although they load lazily."""
    names = dir(helpers)
    assert {"Trial", "Record", "Recipe", "Settings", "load_run", "plots", "run", "loop", "checkpoint"} <= set(names)
    for name in helpers._WHERE:
        assert getattr(helpers, name) is not None, name
    # every module of the package is reachable as H.<module>, except the command-line-only ones
    assert set(MODULES) - set(helpers._SUBMODULES) <= {"errors", "grade", "pipeline", "rundir", "train"}


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
    text = (ROOT / "helpers" / f"{module}.py").read_text()
    return set(re.findall(r"from \.(\w+) import", text)) | set(re.findall(r"from \. import (\w+)", text))


def test_architecture_doc_names_every_module_and_what_it_imports():
    """docs/architecture.md's "may import" column is the code's: a new import shows up here first."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    sections = dict(re.findall(r"### `(\w+)\.py`\n.*?\n\|---\|---\|\n\|[^\n]*\| ([^|\n]*) \|\n", doc, re.S))
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
