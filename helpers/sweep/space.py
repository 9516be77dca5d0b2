"""A sweep's search space: which recipe fields (and model arguments) a study samples, and how.

A search space is a small JSON file (helpers/spaces/*.json; `--space NAME` finds them there),
one key per recipe field, or `model_kwargs.NAME` for an argument of the model factory:

    {"lr": {"log": [0.1, 1.0]},                    log-uniform
     "label_smoothing": [0.0, 0.3],                uniform (integers for int fields)
     "model_kwargs.act": {"choices": ["relu", "gelu"]},
     "epochs": 3}                                  a fixed value ({"fixed": [..]} for a list)

Only recipe fields: the run settings (device, precision, compile, channels_last) change how fast a
trial runs, not what it trains, so a study does not search them (the sweep's flags set them for every
trial). The whole space is checked before any training: every range end and choice must make a valid
recipe and a buildable model. Optuna is needed only to sample (`Space.sample` gets an optuna.Trial).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..recipes import Recipe, Settings, field_types

if TYPE_CHECKING:
    import optuna

SPACES = Path(__file__).resolve().parents[1] / "spaces"   # example search spaces, found by name


class SweepError(UserError):
    """A user mistake in a sweep (bad space, mismatched re-run, unreachable storage): one line, exit 2."""


@dataclass
class Param:
    """One key of a search space: what Optuna samples (or the fixed value) for one field."""
    name: str            # "lr" or "model_kwargs.act"
    kind: str            # "fixed" | "float" | "int" | "choices"
    low: float = None
    high: float = None
    log: bool = False
    choices: list = None
    value: object = None  # the fixed value

    def candidates(self) -> list:
        """Values worth validating before any training: the ends of a range, every choice."""
        return {"fixed": [self.value], "choices": self.choices}.get(self.kind, [self.low, self.high])

    def suggest(self, trial: optuna.Trial):
        if self.kind == "fixed":
            return self.value
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        # Optuna stores categorical values as plain scalars: lists (widths) travel as JSON text
        plain = all(c is None or isinstance(c, (bool, int, float, str)) for c in self.choices)
        if plain:
            return trial.suggest_categorical(self.name, self.choices)
        return json.loads(trial.suggest_categorical(self.name, [json.dumps(c) for c in self.choices]))


def is_int_field(name: str) -> bool:
    """Whether a recipe field holds whole numbers (its range is sampled as integers)."""
    return field_types(Recipe)[name] is int


def _parse_param(key: str, spec, is_int: bool) -> Param:
    number = (int, float)
    if isinstance(spec, dict):
        if set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"]:
            return Param(key, "choices", choices=spec["choices"])
        if set(spec) == {"fixed"}:
            return Param(key, "fixed", value=spec["fixed"])
        if set(spec) == {"log"}:
            lo, hi = _bounds(key, spec["log"])
            if lo <= 0:
                raise SweepError(f"space key {key!r}: a log range needs low > 0, got {lo}")
            return Param(key, "int" if is_int else "float", lo, hi, log=True)
        raise SweepError(f"space key {key!r}: expected {{\"log\": [low, high]}}, {{\"choices\": [...]}} or "
                         f"{{\"fixed\": value}}, got {json.dumps(spec)}")
    if isinstance(spec, list):
        lo, hi = _bounds(key, spec)
        if is_int and not all(isinstance(v, int) for v in (lo, hi)):
            raise SweepError(f"space key {key!r} is an integer field: give integer bounds, got {spec}")
        return Param(key, "int" if is_int else "float", lo, hi)
    if spec is None or isinstance(spec, (bool, str, *number)):
        return Param(key, "fixed", value=spec)
    raise SweepError(f"space key {key!r}: cannot read {spec!r}")


def _bounds(key, pair):
    if not (isinstance(pair, list) and len(pair) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)):
        raise SweepError(f"space key {key!r}: a range is [low, high] of two numbers, got {json.dumps(pair)} "
                         "(use {\"choices\": [...]} for a list of options, {\"fixed\": value} for a fixed list)")
    if not pair[0] < pair[1]:
        raise SweepError(f"space key {key!r}: low must be < high, got {pair}")
    return pair[0], pair[1]


def _model_kwarg_is_int(model: str, kwarg: str) -> bool:
    import inspect

    from ..model import fast_net
    from ..registry import get_factory

    sig = inspect.signature(get_factory(model))  # a registered model or your FILE.py:NAME
    if kwarg not in sig.parameters and any(q.kind == q.VAR_KEYWORD for q in sig.parameters.values()):
        sig = inspect.signature(fast_net)  # `wide` forwards its keyword arguments to fast_net
    default = sig.parameters[kwarg].default if kwarg in sig.parameters else None
    return isinstance(default, int) and not isinstance(default, bool)


class Space:
    """A validated search space: `sample(trial)` gives the recipe overrides of one trial."""

    def __init__(self, spec: dict, recipe: Recipe, source: str = "space"):
        if not isinstance(spec, dict) or not spec:
            raise SweepError(f"{source}: a search space is a non-empty JSON object {{field: spec}}")
        self.spec, self.recipe, self.source = spec, recipe, source
        known, settings = list(field_types(Recipe)), list(field_types(Settings))
        self.params: list[Param] = []
        for key, value in spec.items():
            if key == "model_kwargs":
                raise SweepError(f"{source}: search model arguments one by one, as \"model_kwargs.NAME\" keys")
            if key.startswith("model_kwargs."):
                models = self._models()
                self.params.append(_parse_param(key, value, _model_kwarg_is_int(models[0], key.split(".", 1)[1])))
            elif key in known:
                self.params.append(_parse_param(key, value, is_int_field(key)))
            elif key in settings:
                raise SweepError(f"{source}: {key!r} is a run setting ({', '.join(settings)}): it changes how fast "
                                 f"a trial runs, not what it trains, so a sweep does not search it; set it for "
                                 f"every trial with --set {key}=VALUE instead")
            else:
                raise SweepError(f"{source}: unknown field {key!r}; search a recipe field "
                                 f"({', '.join(known)}) or model_kwargs.NAME")
        self._check_values()

    def _models(self) -> list:
        model = next((p for p in self.params if p.name == "model"), None)
        if "model" in self.spec and model is None:   # model kwargs listed before the model key
            model = _parse_param("model", self.spec["model"], False)
        return model.candidates() if model else [self.recipe.model]

    def _check_values(self):
        """Every range end and every choice must make a valid recipe and a buildable model."""
        from ..registry import build_model

        for p in self.params:
            for value in p.candidates():
                if p.name.startswith("model_kwargs."):
                    kwarg = p.name.split(".", 1)[1]
                    for model in self._models():
                        try:
                            build_model(model, **{**self.recipe.model_kwargs, kwarg: value})
                        except (ValueError, TypeError) as e:
                            raise SweepError(f"{self.source}: {p.name}={json.dumps(value)}: {e}") from None
                else:
                    try:
                        self.recipe.override(**{p.name: value}).validate()
                    except (ValueError, TypeError) as e:
                        raise SweepError(f"{self.source}: {p.name}={json.dumps(value)}: {e}") from None

    @property
    def searched(self) -> list[str]:
        return [p.name for p in self.params if p.kind != "fixed"]

    def sample(self, trial: optuna.Trial) -> dict:
        """Recipe overrides for one trial; sampled model kwargs are merged onto the recipe's
        (a `model_kwargs` override replaces the whole dict)."""
        values = {p.name: p.suggest(trial) for p in self.params}
        overrides = {k: v for k, v in values.items() if not k.startswith("model_kwargs.")}
        kwargs = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model_kwargs.")}
        if kwargs:
            base = {} if overrides.get("model", self.recipe.model) != self.recipe.model else self.recipe.model_kwargs
            overrides["model_kwargs"] = {**base, **kwargs}
        return overrides


def load_space(space, recipe: Recipe) -> Space:
    """A Space from a dict, a JSON file, or the name of a file in helpers/spaces/."""
    if isinstance(space, dict):
        return Space(space, recipe)
    path = Path(space)
    if not path.is_file() and (SPACES / f"{space}.json").is_file():
        path = SPACES / f"{space}.json"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SPACES.glob("*.json")))
        raise SweepError(f"space {space!r} not found: give a JSON file or one of {names}")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: not valid JSON ({e})") from None
    return Space(spec, recipe, source=str(path))
