"""Reading params.yaml into typed `Params`, the first thing every stage does: a typo, a bad value or an
impossible combination stops it with one line naming the file and the dotted key."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.config.schemas import (
    DATA_SCHEMAS,
    MODEL_SCHEMAS,
    BenchmarkConfig,
    EvaluateConfig,
    MlflowConfig,
    Params,
    QuantizeConfig,
    TrainConfig,
)
from pipeline.inference.schema import ConfigError, validate_section

PARAMS_FILE = Path("params.yaml")


def _pick_schema(raw: DictConfig, section: str, key: str, schemas: dict[str, type]) -> type:
    choice = raw.get(key) if isinstance(raw, DictConfig) else None
    if choice not in schemas:
        raise ConfigError(f"{section}.{key} = {choice!r}: must be one of {', '.join(schemas)}")
    return schemas[choice]


SECTIONS: dict[str, type | tuple[str, dict[str, type]]] = {
    "data": ("source", DATA_SCHEMAS),
    "model": ("name", MODEL_SCHEMAS),
    "train": TrainConfig,
    "quantize": QuantizeConfig,
    "benchmark": BenchmarkConfig,
    "evaluate": EvaluateConfig,
    "mlflow": MlflowConfig,
}


def parse_params(raw: DictConfig) -> Params:
    """Validate a composed config (a loaded params.yaml or a Hydra composition) into typed `Params`."""
    unknown = sorted(set(raw.keys()) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (allowed: {', '.join(SECTIONS)})")
    typed = {}
    for section, spec in SECTIONS.items():
        schema = _pick_schema(raw.get(section), section, *spec) if isinstance(spec, tuple) else spec
        typed[section] = validate_section(raw.get(section), section, schema)
    _teacher_model(typed["train"])
    return Params(**typed)


def _teacher_model(train: TrainConfig) -> None:
    """The teachers' model section (`train.distill.fit.model`), typed by the schema its `name` picks, like
    `model`; only checked when teachers are fitted, so the default config needs none."""
    fit, key = train.distill.fit, "train.distill.fit.model"
    if not fit.count:
        fit.model = None
        return
    if not isinstance(fit.model, dict):
        raise ConfigError(f"{key}: missing; train.distill.fit.count = {fit.count} needs the teachers' model "
                          "section (in a preset: `- /model@train.distill.fit.model: fer_vgg`)")
    raw = OmegaConf.create(fit.model)
    fit.model = validate_section(raw, key, _pick_schema(raw, key, "name", MODEL_SCHEMAS))


def load_params(path: Path = PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    """Read and validate params.yaml; on any problem exit with one line naming the file and key.

    `overrides` (`key=value`, dotted) serve the stand-alone uses outside DVC, e.g. `pipeline.evaluate
    model=... data.path=...`; inside `dvc repro` the stages take none.
    """
    try:
        raw = OmegaConf.load(path)
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: not found (run from the project root, or `make params`)") from None
    except Exception as e:  # yaml.YAMLError and friends: one line, not a traceback
        raise SystemExit(f"error: {path}: not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        if overrides:
            raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(overrides))
        return parse_params(raw)
    except ConfigError as e:
        raise SystemExit(f"error: {path}: {e}") from None
