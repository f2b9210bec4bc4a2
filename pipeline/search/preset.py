"""A search preset, `conf/search/<preset>.yaml`: its schema and its loading, apart from params.yaml.

The search config is composed on its own (`+search=<preset>`), so editing it never makes a stage re-run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline import artifacts
from pipeline.config import CONF_DIR, ConfigError, compose
from pipeline.inference.errors import first_line
from pipeline.inference.schema import validate_section

GROUP = "search"  # conf/search/: never in conf/config.yaml's defaults, so never in params.yaml


class ParamType(StrEnum):
    float = "float"
    int = "int"
    categorical = "categorical"


class Direction(StrEnum):
    maximize = "maximize"
    minimize = "minimize"


@dataclass
class SpaceParam:
    """One searched key: a number range (`low`..`high`, `log`, `step`) or a list of `choices`."""

    type: ParamType = MISSING
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


@dataclass
class SearchConfig:
    study_name: str = MISSING
    n_trials: int = field(default=MISSING, metadata={"ge": 1})
    timeout_min: float = field(default=MISSING, metadata={"ge": 0.0})  # 0 = none; checked before each trial
    seed: int = MISSING
    direction: Direction = MISSING
    metric: str = MISSING  # a key of the flat metrics file
    metrics_file: str | None = MISSING  # null = artifacts.EVALUATE_METRICS
    storage: str = MISSING  # a journal file (relative to the repo root) or an Optuna storage URL
    overrides: list[str] = MISSING  # fixed Hydra overrides of every trial, e.g. experiment=fer2013
    space: dict[str, SpaceParam] = field(default_factory=dict)

    @property
    def objective_file(self) -> Path:
        return Path(self.metrics_file) if self.metrics_file else artifacts.EVALUATE_METRICS


class SearchError(SystemExit):
    """A problem that no further trial can fix (a config or setup error): stops the search."""


def load_search(preset: str = "default", overrides: list[str] | None = None,
                conf_dir: Path = CONF_DIR) -> SearchConfig:
    """`conf/search/<preset>.yaml` (with its defaults) and `key=value` overrides of it, validated."""
    where = f"conf/{GROUP}/{preset}.yaml"
    if not (conf_dir / GROUP / f"{preset}.yaml").is_file():
        presets = sorted(p.stem for p in (conf_dir / GROUP).glob("*.yaml"))
        raise SearchError(f"error: {where}: not found (presets: {', '.join(presets)})")
    keys = [f.name for f in dataclasses.fields(SearchConfig) if f.name != "space"]
    for override in overrides or []:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.split(".")[0] == "space":
            raise SearchError(f"error: {override}: the space is edited in a preset file (its keys hold dots)")
        if key not in keys:
            raise SearchError(f"error: {override}: unknown key {key!r} (allowed: {', '.join(keys)})")
    try:
        raw = compose([f"+{GROUP}={preset}", *(f"{GROUP}.{o}" for o in overrides or [])], conf_dir=conf_dir)[GROUP]
        own = OmegaConf.load(conf_dir / GROUP / f"{preset}.yaml")
        if "space" in own:  # a preset's space replaces the inherited one (Hydra would merge the two)
            raw.space = own.space
        if isinstance(raw.get("space"), DictConfig):  # each entry alone, so a message lists its own keys
            for key, entry in raw.space.items():
                validate_section(entry, f"{GROUP}.space.{key}", SpaceParam)
        return validate_section(raw, GROUP, SearchConfig)
    except ConfigError as e:
        raise SearchError(f"error: {where}: {e}") from None
    except Exception as e:  # Hydra's override and composition errors: their first line
        raise SearchError(f"error: {where}: {first_line(e)}") from None
