"""Search-space specifications: small, plain objects (no Optuna import), so that model classes
can declare their default search space without making ``import cellvi`` heavier.

A search space is ``{"model_params": {name: spec, ...}, "train_params": {name: spec, ...}}``;
``model_params`` go to the model's constructor, ``train_params`` to ``train()`` (or to its
``plan_kwargs`` when they are :class:`cellvi.train.TrainingPlan` settings).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

__all__ = ["Spec", "choice", "uniform", "loguniform", "randint", "check_space", "space_from_json", "space_to_json"]

SECTIONS = ("model_params", "train_params")


class Spec:
    """One parameter's range of values. Use :func:`choice`, :func:`uniform`,
    :func:`loguniform` or :func:`randint` to make one."""

    kind = ""

    def suggest(self, trial, name: str):
        raise NotImplementedError

    def contains(self, value) -> bool:
        raise NotImplementedError

    def to_json(self) -> dict:
        return {"kind": self.kind, **self.__dict__}

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        args = ", ".join(repr(v) for v in self.__dict__.values())
        return f"{self.kind}({args})"


class _Choice(Spec):
    kind = "choice"

    def __init__(self, values: Sequence):
        values = list(values)
        if not values:
            raise ValueError("choice() needs at least one value")
        for v in values:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise TypeError(f"choice() values must be None, bool, int, float or str, got {v!r} "
                                f"({type(v).__name__})")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"choice() values must be distinct, got {values}")
        self.values = values

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, self.values)

    def contains(self, value) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values) or (
            # 1 and 1.0 (R numbers arrive as floats) count as the same choice
            any(isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(value, (int, float))
                and not isinstance(value, bool) and v == value for v in self.values))


class _Uniform(Spec):
    kind = "uniform"

    def __init__(self, low: float, high: float):
        low, high = _number(low, "low"), _number(high, "high")
        if not low < high:
            raise ValueError(f"{self.kind}() needs low < high, got low={low}, high={high}")
        self.low, self.high = low, high

    def suggest(self, trial, name: str):
        return trial.suggest_float(name, self.low, self.high)

    def contains(self, value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


class _LogUniform(_Uniform):
    kind = "loguniform"

    def __init__(self, low: float, high: float):
        super().__init__(low, high)
        if self.low <= 0:
            raise ValueError(f"loguniform() needs low > 0, got {self.low}")

    def suggest(self, trial, name: str):
        return trial.suggest_float(name, self.low, self.high, log=True)


class _RandInt(Spec):
    kind = "randint"

    def __init__(self, low: int, high: int):
        low, high = _whole(low, "low"), _whole(high, "high")
        if not low <= high:
            raise ValueError(f"randint() needs low <= high, got low={low}, high={high}")
        self.low, self.high = low, high

    def suggest(self, trial, name: str):
        return trial.suggest_int(name, self.low, self.high)

    def contains(self, value) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
                and self.low <= value <= self.high)


def choice(values: Sequence) -> Spec:
    """One of ``values`` (numbers, strings, booleans or None).

    Examples
    --------
    >>> from cellvi.autotune import choice
    >>> choice(["nb", "zinb"])
    choice(['nb', 'zinb'])
    """
    return _Choice(values)


def uniform(low: float, high: float) -> Spec:
    """A float drawn uniformly from [low, high].

    Examples
    --------
    >>> uniform(0.0, 0.3)
    uniform(0.0, 0.3)
    """
    return _Uniform(low, high)


def loguniform(low: float, high: float) -> Spec:
    """A positive float whose logarithm is uniform on [log low, log high] (learning rates).

    Examples
    --------
    >>> loguniform(1e-4, 1e-2)
    loguniform(0.0001, 0.01)
    """
    return _LogUniform(low, high)


def randint(low: int, high: int) -> Spec:
    """An integer from ``low`` to ``high``, both included.

    Examples
    --------
    >>> randint(1, 3)
    randint(1, 3)
    """
    return _RandInt(low, high)


_KINDS = {"choice": _Choice, "uniform": _Uniform, "loguniform": _LogUniform, "randint": _RandInt}


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def as_spec(value, where: str) -> Spec:
    """A spec from a Spec, or from its JSON form ``{"kind": "choice", "values": [...]}`` (what R
    and the study's storage send), or from a plain list (a choice)."""
    if isinstance(value, Spec):
        return copy.deepcopy(value)  # run_autotune may extend a choice: never the model's own
    if isinstance(value, dict) and "kind" in value:
        kind = value["kind"]
        if kind not in _KINDS:
            raise ValueError(f"{where}: unknown kind {kind!r}; use one of {', '.join(_KINDS)}")
        args = {k: v for k, v in value.items() if k != "kind"}
        try:
            return _KINDS[kind](**args)
        except TypeError as err:
            raise TypeError(f"{where}: {err}") from None
    if isinstance(value, (list, tuple)):
        return _Choice(value)
    raise TypeError(f"{where} must be choice(...), uniform(...), loguniform(...) or randint(...), got {value!r}")


def check_space(space) -> dict[str, dict[str, Spec]]:
    """``space`` as ``{"model_params": {...}, "train_params": {...}}`` of Specs, checked:
    known sections, at least one parameter, a name in one section only."""
    if space is None:
        raise ValueError("the search space is empty")
    if not isinstance(space, dict):
        raise TypeError(f"search_space must be a dict with 'model_params' and/or 'train_params', got "
                        f"{type(space).__name__}")
    unknown = set(space) - set(SECTIONS)
    if unknown:
        raise ValueError(f"search_space has unknown section(s) {sorted(unknown)}; use 'model_params' "
                         "(arguments of the model) and 'train_params' (arguments of train())")
    out: dict[str, dict[str, Spec]] = {}
    for section in SECTIONS:
        params = space.get(section) or {}
        if not isinstance(params, dict):
            raise TypeError(f"search_space['{section}'] must be a dict of name -> spec, got {type(params).__name__}")
        out[section] = {str(name): as_spec(spec, f"search_space['{section}']['{name}']")
                        for name, spec in params.items()}
    if not any(out.values()):
        raise ValueError("the search space is empty: give at least one parameter in 'model_params' or "
                         "'train_params', e.g. {'train_params': {'lr': loguniform(1e-4, 1e-2)}}")
    both = set(out["model_params"]) & set(out["train_params"])
    if both:
        raise ValueError(f"parameter(s) {sorted(both)} appear in both model_params and train_params; keep each "
                         "in one section")
    return out


def space_to_json(space: dict[str, dict[str, Spec]]) -> dict:
    return {section: {name: spec.to_json() for name, spec in params.items()} for section, params in space.items()}


def space_from_json(d: dict) -> dict[str, dict[str, Spec]]:
    return check_space(d)


def flat_name(section: str, name: str) -> str:
    """A parameter's name in the study: plain, since a name lives in one section only."""
    return name


def describe(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
