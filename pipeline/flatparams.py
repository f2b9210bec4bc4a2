"""The resolved config as flat `section.key` strings, as a run describes itself: MLflow params, the
lineage's diff against the defaults, and which experiment preset a run's recipe is."""

from __future__ import annotations

import dataclasses
import functools
from enum import StrEnum
from pathlib import Path
from typing import Any

from pipeline.config import CONF_DIR, DATA_SCHEMAS, Params, compose, parse_params


def override_value(value: Any) -> str:
    """A value in Hydra override syntax, so a logged param can be replayed as `-S key=<value>`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return str(value.value if isinstance(value, StrEnum) else value)


NOT_APPLICABLE = "n/a"  # a logged param that this run's data source does not have


def logged_params(params: Params) -> dict[str, str]:
    """`to_flat_dict`, plus every data key of the other sources as `n/a`: runs on different sources then
    have the same param columns in MLflow, and its compare plots show `n/a` instead of a made-up value."""
    flat = to_flat_dict(params)
    for schema in DATA_SCHEMAS.values():
        for f in dataclasses.fields(schema):
            flat.setdefault(f"data.{f.name}", NOT_APPLICABLE)
    return flat


def to_flat_dict(params: Params) -> dict[str, str]:
    """The resolved config as `section.key` -> override-syntax value: MLflow params and lineage diffs."""
    flat: dict[str, str] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                flat[f"{prefix}{f.name}"] = override_value(value)

    walk(params, "")
    return flat


PRESET_SHAPING = ("model.", "train.", "quantize.views.")  # what makes a preset's model (data may live anywhere)
# A run's draw and its inputs, not its recipe: `-S train.seed=1` is the preset's second seed, and the
# distillation preset is run with the teacher a user names.
PRESET_FREE = ("train.seed", "train.distill.teachers")


@functools.cache
def preset_params(pattern: str = "*", conf_dir: Path = CONF_DIR) -> dict[str, dict[str, str]]:
    """The model, train and view params of each experiment preset (`conf/experiment/<pattern>.yaml`) as it
    is now, flat as MLflow logs them. Composing them all takes seconds; a process needs them once. A preset
    that does not compose (a user's half-edited file) is left out: no run can have its recipe."""
    presets = {}
    for path in sorted((conf_dir / "experiment").glob(f"{pattern}.yaml")):
        try:
            flat = to_flat_dict(parse_params(compose([f"experiment={path.stem}"], conf_dir=conf_dir)))
        except Exception:  # Hydra's and our ConfigError alike; the preset's own run reports it when used
            continue
        presets[path.stem] = {k: v for k, v in flat.items() if k.startswith(PRESET_SHAPING) and k not in PRESET_FREE}
    return presets


def preset_of(flat: dict[str, str], presets: dict[str, dict[str, str]],
              defaults: dict[str, str] | None = None) -> str:
    """The preset whose model, train and view params these are, all of them; '' for any other recipe.

    The params decide, not the `-S experiment=` that was typed: `experiment=fer2013 train.lr=0.01` is not
    the preset's recipe. A key missing from `flat` counts at its value in `defaults` (for runs logged
    before the key was added to the config, with a default that keeps the old behaviour).
    """
    defaults = defaults or {}
    return next((name for name, want in presets.items()
                 if all(flat.get(k, defaults.get(k)) == v for k, v in want.items())), "")
