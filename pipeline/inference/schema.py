"""The typed-config toolkit: dataclass schemas checked by OmegaConf, with bounds and cross-field rules.

Generic, so that both the pipeline's params (pipeline/config.py) and the runner's own config use it; it
lives in the runner's package because the runner must not import the pipeline (nor TensorFlow). Every
problem is a `ConfigError` whose message is the one line a user sees, naming the dotted key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """A bad key or value in a config file; its message is the one line a user sees."""


def bounded(ge: float | None = None, gt: float | None = None, le: float | None = None,
             lt: float | None = None) -> Any:
    """A required field with numeric bounds, checked by `validate` after OmegaConf has checked the type."""
    return field(default=MISSING, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt})


def required() -> Any:
    return field(default=MISSING)


def _check_bounds(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_bounds(value, f"{key}.")
            continue
        limits = [(op, f.metadata.get(op)) for op in ("ge", "gt", "le", "lt")]
        for op, limit in limits:
            if limit is None or isinstance(value, bool):
                continue
            ok = {"ge": value >= limit, "gt": value > limit, "le": value <= limit, "lt": value < limit}[op]
            if not ok:
                symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
                allowed = " and ".join(f"{symbols[o]} {lim}" for o, lim in limits if lim is not None)
                raise ConfigError(f"{key} = {value!r}: must be {allowed}")


def validate_section(raw: Any, section: str, schema: type) -> Any:
    """Merge a raw mapping into its schema and return the typed object, or raise a one-line ConfigError.

    `section` prefixes the keys in messages ("train" -> `train.lr`); "" validates a whole config at its root.
    """
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{section}: missing section (expected a mapping with keys "
                          f"{', '.join(f.name for f in dataclasses.fields(schema))})")
    try:
        if section:
            merged = OmegaConf.merge(OmegaConf.create({section: OmegaConf.structured(schema)}), {section: raw})
            obj = OmegaConf.to_object(merged)[section]
        else:
            obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw))
    except ConfigKeyError as e:
        allowed = ", ".join(f.name for f in dataclasses.fields(schema))
        raise ConfigError(f"{e.full_key}: unknown key (allowed in {section or 'the config'}: {allowed})") from None
    except OmegaConfBaseException as e:
        message = str(e.msg or e).splitlines()[0].replace("Structured config of type", "schema")
        raise ConfigError(f"{e.full_key or section}: {message}") from None
    _check_bounds(obj, f"{section}." if section else "")
    _check_rules(obj, f"{section}." if section else "")
    return obj


def _check_rules(obj: Any, prefix: str) -> None:
    """Each (nested) schema's `check()`: rules across fields, reported like a bound, innermost first."""
    for f in dataclasses.fields(obj):
        if dataclasses.is_dataclass(value := getattr(obj, f.name)):
            _check_rules(value, f"{prefix}{f.name}.")
    if hasattr(obj, "check") and (problem := obj.check()):
        raise ConfigError(f"{prefix}{problem}")
