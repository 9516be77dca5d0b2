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

A run records how to rebuild its network (`model_identity`): the spec, a fingerprint of the
parameter names and shapes, and for a file its SHA-1 and a copy kept in the run folder. Analysis
in another runtime (notebook 04 on Colab) rebuilds from that copy when the file is not there; a
resume refuses a file or an architecture that changed since the checkpoint.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path

import torch.nn as nn

from .errors import UserError
from .rundir import atomic_write
from .model import MODELS

# recipe.model of a network passed as a Python callable: it cannot be rebuilt from the name alone
FACTORY = "factory:"


class ModelError(UserError):
    """A model that cannot be found, imported or built; the message names the fix."""


def list_models() -> list[str]:
    """The registered names (any FILE.py:NAME works too)."""
    return sorted(MODELS)


def is_file_spec(spec) -> bool:
    return isinstance(spec, str) and ".py:" in spec


def parse_file_spec(spec: str) -> tuple[Path, str]:
    """"dir/mynet.py:MyNet" -> (Path("dir/mynet.py"), "MyNet")."""
    path, _, name = spec.rpartition(":")
    if not path.endswith(".py") or not name.isidentifier():
        raise ModelError(f"model {spec!r}: write FILE.py:NAME, e.g. mynet.py:MyNet "
                         "(NAME: a class or function defined in FILE.py)")
    return Path(path).expanduser(), name


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
        except ModelError as e:
            return str(e)
        if not path.is_file():
            return (f"model {spec!r}: there is no file {path} (a path relative to the folder you run from, "
                    "which is the project root in the notebooks, or an absolute one)")
        return None
    if spec.endswith(".py"):
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
    module = _import_file(path, spec)
    factory = getattr(module, name, None)
    if factory is None:
        defined = sorted(k for k, v in vars(module).items() if getattr(v, "__module__", None) == module.__name__
                         and (inspect.isfunction(v) or (isinstance(v, type) and issubclass(v, nn.Module))))
        raise ModelError(f"model {spec!r}: {path} defines no {name!r}"
                         + (f"; it defines {', '.join(defined)}" if defined else ""))
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
    """FILE.py:NAME for the one network FILE.py defines (see network_names); a ModelError that lists
    what it defines when there is none or more than one. Runs the file, as build_model would."""
    path = Path(path)
    if path.suffix != ".py":
        raise ModelError(f"{path} is not a Python file: give the network's file, FILE.py (or FILE.py:NAME)")
    module = _import_file(path, str(path))
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
