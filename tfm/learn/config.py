"""One (de)serialiser for tfm's frozen configuration dataclasses (JSON beside every run
and model).

``to_dict(config)`` is :func:`dataclasses.asdict`. ``from_dict(cls, d)`` rebuilds a
(possibly nested) dataclass from such a dict: nested dataclass fields are rebuilt from
their own dicts (the field's type, or its default's type, says which class), JSON lists
become tuples (tfm's configurations hold tuples, never lists), and missing keys take the
field's default, so a newer tfm reads an older file. A key the class does not know is an
error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import typing


def to_dict(config) -> dict:
    """The configuration as plain JSON-ready values."""
    return dataclasses.asdict(config)


def to_json(config) -> str:
    return json.dumps(to_dict(config), sort_keys=True)


def _tuples(v):
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v


def _dataclass_type(cls, field: dataclasses.Field, hints: dict):
    default = field.default
    if dataclasses.is_dataclass(default):
        return type(default)
    hint = hints.get(field.name)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    return None


def from_dict(cls, d: dict):
    """An instance of dataclass ``cls`` from :func:`to_dict`'s output (see the module docs)."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping of settings, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting(s) {unknown}; known: {sorted(fields)}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults' types
        hints = {}
    kwargs = {}
    for name, value in d.items():
        sub = _dataclass_type(cls, fields[name], hints)
        kwargs[name] = from_dict(sub, value) if sub is not None and isinstance(value, dict) else _tuples(value)
    return cls(**kwargs)


def check_counts(config, names) -> None:
    """Raise ValueError unless each of ``names`` is a whole number >= 1 on ``config``."""
    for name in names:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) and not (hasattr(v, "__index__") and not isinstance(v, float)) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")


def from_json(cls, text: str):
    return from_dict(cls, json.loads(text))
