"""Which network a model name means: a registered name, your own FILE.py:NAME, or a factory.

    build_model("fast")                 # a network registered in helpers/model.py (MODELS)
    build_model("mynet.py:MyNet")       # a class or function NAME defined in your own file
    build_model(my_factory)             # from Python: any callable that returns an nn.Module

Designing the network is the assignment, so a student's own file is a model like any other: the
notebooks, `python -m helpers.train / benchmark / pipeline / constraints / diagram` and `Trial`
all take `model="FILE.py:NAME"`. FILE is a path relative to the folder you run from (the notebooks
run from the project root) or absolute (e.g. on Google Drive). NAME is an nn.Module class or a
function returning one; it is called with the recipe's model_kwargs, which are empty unless you
set them (a recipe's own model arguments are dropped when you pick another model).

A notebook is a file like any other: FILE.ipynb:NAME builds NAME from the notebook's definitions,
and runs none of its other cells (`_import_notebook`).

A run records how to rebuild its network (`model_identity`): the spec, a fingerprint of the
parameter names and shapes, and for a file its SHA-1 and a copy kept in the run folder. Analysis
in another runtime (notebook 04 on Colab) rebuilds from that copy when the file is not there; a
resume refuses a file or an architecture that changed since the checkpoint.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import sys
import traceback
import types
from pathlib import Path

import torch.nn as nn

from .colab import DRIVE_FOLDER, project_folder
from .errors import UserError
from .rundir import atomic_write
from .model import MODELS

# recipe.model of a network passed as a Python callable: it cannot be rebuilt from the name alone
FACTORY = "factory:"
# a model file in the project's folder on Google Drive: "drive:mynet.py:MyNet"
DRIVE_PREFIX = "drive:"
# the SHA-1 of the example network shipped as mynet.py (tests/test_registry.py keeps it equal to the file), so a
# notebook can say when a student's "own" network is still the example
EXAMPLE_SHA1 = "bc494cdff9832519da25819d4fcd6a7399497125"


class ModelError(UserError):
    """A model that cannot be found, imported or built; the message names the fix."""


def list_models() -> list[str]:
    """The registered names (any FILE.py:NAME works too)."""
    return sorted(MODELS)


def is_file_spec(spec) -> bool:
    return isinstance(spec, str) and (".py:" in spec or ".ipynb:" in spec)


def file_label(spec: str) -> str:
    """NAME of a FILE.py:NAME spec, for run names and picture names (nothing is resolved or mounted)."""
    return spec.rpartition(":")[2]


def parse_file_spec(spec: str) -> tuple[Path, str]:
    """"dir/mynet.py:MyNet" -> (Path("dir/mynet.py"), "MyNet"); "colab.ipynb:Net" likewise.

    "drive:FILE.py:NAME" is FILE in the project's folder on Google Drive (My Drive/cifar10-small-cnn/FILE.py),
    mounted first in Colab: every notebook's runtime finds the same file there, however the code was cloned.
    """
    path, _, name = spec.rpartition(":")
    on_drive = path.startswith(DRIVE_PREFIX)
    path = path.removeprefix(DRIVE_PREFIX)
    if not path.endswith((".py", ".ipynb")) or not name.isidentifier() or (on_drive and Path(path).is_absolute()):
        raise ModelError(f"model {spec!r}: write FILE.py:NAME or FILE.ipynb:NAME, e.g. mynet.py:MyNet (NAME: a class "
                         f"or function defined in FILE), or {DRIVE_PREFIX}FILE.py:NAME for a file in My Drive/"
                         f"{DRIVE_FOLDER}")
    return (project_folder() / path if on_drive else Path(path).expanduser()), name


def spec_name(spec) -> str:
    """How a run records its model: the spec itself, or factory:NAME for a Python callable."""
    if callable(spec):
        return FACTORY + getattr(spec, "__qualname__", type(spec).__name__)
    return spec


def model_problem(spec) -> str | None:
    """Why `spec` names no model (one phrase), or None. Cheap: a file is found, not imported."""
    if callable(spec) or spec in MODELS or (isinstance(spec, str) and spec.startswith(FACTORY)):
        return None
    if not isinstance(spec, str):
        return f"model must be a registered name or FILE.py:NAME, got {spec!r}"
    if is_file_spec(spec):
        try:
            path, _ = parse_file_spec(spec)
        except UserError as e:  # a malformed spec; a Drive file outside Colab
            return str(e)
        if not path.is_file():
            if spec.startswith(DRIVE_PREFIX):
                return (f"model {spec!r}: there is no file {path} on your Google Drive yet; notebook 02 puts the "
                        f"example network there when it is missing (or upload your own FILE.py to My Drive/{DRIVE_FOLDER})")
            return (f"model {spec!r}: there is no file {path} (a path relative to the folder you run from, "
                    "which is the project root in the notebooks, or an absolute one)")
        return None
    if spec.endswith((".py", ".ipynb")):
        return f"model {spec!r}: name the class or function to use, as {spec}:NAME"
    return f"unknown model {spec!r}; use one of {', '.join(list_models())}, or your own FILE.py:NAME"


def _import_file(path: Path, spec: str):
    """Execute FILE afresh (so an edited file is seen at once) as a module of its own."""
    name = "helpers_model_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        if isinstance(e, SyntaxError):
            line, what = e.lineno, e.msg
        else:
            line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__))
                         if Path(f.filename).resolve() == path.resolve()), None)
            what = str(e)
        where = f"{path}, line {line}" if line else str(path)
        raise ModelError(f"model {spec!r}: {where} fails to import: {type(e).__name__}: {what}") from None
    return module


class _FailedImport:
    """Stands in a notebook's namespace for a name whose import failed: harmless until the network uses it."""

    def __init__(self, spec, name, statement, error):
        self.__dict__.update(_spec=spec, _name=name, _statement=statement, _error=error)

    def _fail(self, *args, **kwargs):
        raise ModelError(f"model {self._spec!r}: the network uses {self._name}, but `{self._statement}` failed "
                         f"({self._error}): install what it imports, or use something else")

    __call__ = _fail

    def __getattr__(self, attr):
        if attr.startswith("__"):  # copy, pickle and inspect probe for these: only a real use should fail
            raise AttributeError(attr)
        self._fail()

    def __mro_entries__(self, bases):  # class Net(Base), Base from a failed import
        self._fail()


def _bind(target, value, namespace):
    if isinstance(target, ast.Name):
        namespace[target.id] = value
    elif (isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (tuple, list))
          and len(target.elts) == len(value)):
        for t, v in zip(target.elts, value):
            _bind(t, v, namespace)


def _import_notebook(path: Path, spec: str):
    """A module of the definitions in a notebook's code cells: its imports, classes and functions, and names
    bound to a plain literal (`dropout_value = 0.1`, evaluated by ast.literal_eval). No other statement runs,
    so no training cell, download or file write does. Lines starting with % or ! (IPython magics, shell
    commands) are dropped; a cell that is still not Python is skipped. An import that fails (google.colab
    outside Colab, a package not installed) is skipped with a note, and fails the build only if the network
    uses what it imports."""
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = [c for c in cells if c.get("cell_type") == "code"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"model {spec!r}: {path} is not a Jupyter notebook (JSON with cells): "
                         f"{type(e).__name__}: {e}") from None
    name = "helpers_model_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module = types.ModuleType(name)
    module.__file__, module.__unparsed__ = str(path), []
    sys.modules[name] = module  # dataclasses and pickling look a class's module up by name
    namespace = vars(module)
    for number, cell in enumerate(code, 1):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        # blanked, not removed: line numbers in messages stay the cell's
        lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n")]
        where = f"{path}, code cell {number}"
        try:
            tree = ast.parse("\n".join(lines), filename=where)
        except SyntaxError as e:
            module.__unparsed__.append(f"code cell {number} is not Python (line {e.lineno}: {e.msg}), skipped")
            print(f"note: {where} is not Python (line {e.lineno}: {e.msg}): skipped", file=sys.stderr)
            continue
        for stmt in tree.body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
                try:
                    value = ast.literal_eval(stmt.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    continue  # computed: running it could do anything
                for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                    _bind(target, value, namespace)
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                try:
                    exec(compile(ast.Module([stmt], []), where, "exec"), namespace)
                except Exception as e:  # noqa: BLE001  (a package may fail to import in any way)
                    statement, error = ast.unparse(stmt), f"{type(e).__name__}: {e}"
                    for alias in stmt.names:
                        bound = alias.asname or alias.name.split(".")[0]
                        if bound != "*":
                            namespace[bound] = _FailedImport(spec, bound, statement, error)
                    print(f"note: {where}, line {stmt.lineno}: `{statement}` skipped ({error})", file=sys.stderr)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                try:
                    exec(compile(ast.Module([stmt], []), where, "exec"), namespace)
                except ModelError:
                    sys.modules.pop(name, None)
                    raise
                except Exception as e:
                    sys.modules.pop(name, None)
                    line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__))
                                 if f.filename == where), stmt.lineno)
                    raise ModelError(f"model {spec!r}: {where}, line {line} fails: {type(e).__name__}: {e}") from None
    return module


def _import_model_file(path: Path, spec: str):
    """A model file as a module: a notebook's definitions, or a Python file run afresh."""
    return (_import_notebook if path.suffix == ".ipynb" else _import_file)(path, spec)


def get_factory(spec):
    """The callable that builds `spec`'s network (a class or a function)."""
    if callable(spec):
        return spec
    problem = model_problem(spec)
    if problem:
        raise ModelError(problem)
    if spec in MODELS:
        return MODELS[spec]
    if spec.startswith(FACTORY):
        raise ModelError(f"model {spec!r} was a function passed from Python: pass the same function again "
                         "(Trial(model=...), load_run(..., model=...))")
    path, name = parse_file_spec(spec)
    module = _import_model_file(path, spec)
    factory = getattr(module, name, None)
    if factory is None:
        defined = sorted(k for k, v in vars(module).items() if getattr(v, "__module__", None) == module.__name__
                         and (inspect.isfunction(v) or (isinstance(v, type) and issubclass(v, nn.Module))))
        raise ModelError(f"model {spec!r}: {path} defines no {name!r}"
                         + (f"; it defines {', '.join(defined)}" if defined else "")
                         + "".join(f"; {note}" for note in getattr(module, "__unparsed__", ())))
    if not callable(factory):
        raise ModelError(f"model {spec!r}: {name} is a {type(factory).__name__}, not a class or function")
    return factory


def build_model(spec, **kwargs) -> nn.Module:
    """Build a registered model, FILE.py:NAME or a factory; kwargs go to its constructor (e.g. dropout=0.1)."""
    factory = get_factory(spec)
    try:  # wrong arguments are the caller's mistake; an error inside the constructor keeps its traceback
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ModelError(f"bad override for model {spec_name(spec)!r}: {e}") from None
    except ValueError:  # a builtin without a readable signature: let the call decide
        pass
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec_name(spec)!r} returned {str(model)[:40]!r} ({type(model).__name__}), "
                         "not an nn.Module")
    return model


# --------------------------------------------------------------------------- what a run records

def architecture_fingerprint(model: nn.Module) -> str:
    """A hash of the parameter and buffer names and shapes: equal for the same layers."""
    h = hashlib.sha1()
    for key, value in model.state_dict().items():
        h.update(f"{key}:{tuple(value.shape)}\n".encode())
    return h.hexdigest()[:16]


def file_source(spec) -> bytes | None:
    """The bytes of FILE for a FILE.py:NAME spec (read once, so the copy a run keeps is what it built)."""
    return parse_file_spec(spec)[0].read_bytes() if is_file_spec(spec) else None


def model_identity(spec, model: nn.Module, source: bytes | None = None) -> dict:
    """What a run stores about its network: spec, architecture fingerprint; for a file also its
    path, SHA-1 and the name of the copy kept in the run folder."""
    identity = dict(spec=spec_name(spec), architecture=architecture_fingerprint(model))
    if source is not None:
        path, _ = parse_file_spec(spec)
        identity |= dict(file=str(path), sha1=hashlib.sha1(source).hexdigest(), copy=path.name)
    return identity


def network_source(spec, identity: dict | None = None) -> str:
    """One line saying which network is built, from which file: its path and SHA-1, and a note when it is
    the example shipped as mynet.py, unchanged. With a run's `identity` (model_identity), the file the run
    was trained from. So a notebook never trains or analyses another network than the one meant, unseen."""
    spec = spec_name(spec)
    if spec in MODELS:
        return f"network: {spec}, registered in helpers/model.py ({MODELS[spec].__name__})"
    if not is_file_spec(spec):
        return f"network: {spec} (a Python function, as passed)"
    if identity and identity.get("sha1"):
        where, sha1, how = identity["file"], identity["sha1"], "as this run trained it"
    else:
        path = parse_file_spec(spec)[0]
        where, sha1, how = str(path), hashlib.sha1(path.read_bytes()).hexdigest(), "as it is now"
    line = f"network: {file_label(spec)} from {where} (SHA-1 {sha1[:12]}, {how})"
    if sha1 == EXAMPLE_SHA1:
        line += ("; this is the example shipped with the project, unchanged: edit it to make the network yours "
                 "(docs/usage.md, Make it yours)")
    return line


def example_file() -> Path:
    """The example network shipped with the project (its mynet.py)."""
    return Path(__file__).resolve().parents[1] / "mynet.py"


def keep_copy(run_dir, identity: dict, source: bytes | None):
    """Write the model file's copy into the run folder, once (atomically)."""
    if source is None or not run_dir:
        return
    target = Path(run_dir) / identity["copy"]
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda f: f.write(source))


def rebuild_spec(identity: dict, run_dir, log=print) -> str:
    """The spec that rebuilds a run's network: its own file if unchanged, else the run folder's copy."""
    spec = identity["spec"]
    if "sha1" not in identity:
        return spec
    path, name = parse_file_spec(spec)
    copy = Path(run_dir) / identity["copy"]
    for candidate in (path, copy):
        if candidate.is_file() and hashlib.sha1(candidate.read_bytes()).hexdigest() == identity["sha1"]:
            if candidate == copy and candidate.resolve() != path.resolve():
                why = "has changed since" if path.is_file() else "is not here"
                log(f"note: {path} {why}: the network is rebuilt from the run folder's copy, {copy}")
            return f"{candidate}:{name}"
    raise ModelError(f"this run was trained with {spec} (SHA-1 {identity['sha1'][:12]}), but that file "
                     f"{'has changed' if path.is_file() else 'is not here'} and the run folder has no intact copy "
                     f"({copy}): put the file back as it was")


# --------------------------------------------------------------------------- the one network in a file

# A class whose own name or a base's is one of the rules' stage classes is a part of a network (helpers'
# blocks, a subclass, or a plain-torch class named so), never a whole one: named by name, not by
# isinstance, so that a plain-torch ConvBlock counts as the rule checker counts it.
_STAGE_NAMES = ("ConvBlock", "TransitionBlock")


def network_names(module) -> list[str]:
    """What `module` defines that may be its network, in definition order: the public nn.Module classes
    defined in it (not imported into it) that build without arguments, stages excluded; when there
    is none, its public functions that can be called without arguments (factories).

    Classes first: a file's `def main()` or `def show()` takes no arguments either, and a class says
    what it builds, where a function says so only when called. For any module object, so that a
    notebook's namespace can be searched the same way as a file's."""
    def buildable(value):
        try:
            inspect.signature(value).bind()
        except TypeError:
            return False
        except ValueError:  # no readable signature: let the call decide
            pass
        return True

    own = [(name, value) for name, value in vars(module).items()
           if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__]
    classes = [name for name, value in own if isinstance(value, type) and issubclass(value, nn.Module)
               and not any(c.__name__ in _STAGE_NAMES for c in value.__mro__) and buildable(value)]
    return classes or [name for name, value in own if inspect.isfunction(value) and buildable(value)]


def find_network(path) -> str:
    """FILE.py:NAME (or FILE.ipynb:NAME) for the one network the file defines (see network_names); a ModelError
    that lists what it defines when there is none or more than one. Runs the file (a notebook's definitions
    only), as build_model would."""
    path = Path(path)
    if path.suffix not in (".py", ".ipynb"):
        raise ModelError(f"{path} is not a Python file or notebook: give the network's file, FILE.py or FILE.ipynb "
                         "(or FILE.py:NAME)")
    module = _import_model_file(path, str(path))
    names = network_names(module)
    if len(names) == 1:
        return f"{path}:{names[0]}"
    if names:
        raise ModelError(f"{path} defines {len(names)} networks ({', '.join(names)}): name the one to use, "
                         f"as {path}:{names[0]}")
    defined = [name for name, value in vars(module).items() if getattr(value, "__module__", None) == module.__name__
               and (inspect.isfunction(value) or isinstance(value, type))]
    raise ModelError(f"{path} defines no network that builds without arguments"
                     + (f" (it defines {', '.join(defined)})" if defined else "")
                     + ": give every argument of your network class a default, or name it as FILE.py:NAME")
