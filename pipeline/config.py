"""Typed schemas for params.yaml and the loader every stage starts with.

`dvc exp run` composes the Hydra tree in `conf/` into `params.yaml`; plain `dvc repro` reads the committed
file. Either way the stages only ever see `params.yaml`, so this is where a typo must be caught: before a
two-hour training, not after it. The YAML files in `conf/` hold the values (one source of defaults); the
dataclasses below hold only types and bounds, so a missing key is an error rather than a silent default.

Errors come out as one line naming the file and the dotted key, e.g.
``params.yaml: train.lr = -1.0: must be > 0``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.inference.contract import Family
from pipeline.inference.detector_config import DETECTORS
from pipeline.inference.errors import first_line
from pipeline.inference.schema import ConfigError, bounded, required, validate_section

PARAMS_FILE = Path("params.yaml")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


# ---------------------------------------------------------------- data
class Source(StrEnum):
    synthetic = "synthetic"
    fer2013 = "fer2013"
    fer2013_csv = "fer2013_csv"


class Protocol(StrEnum):
    auto = "auto"
    official = "official"
    holdout = "holdout"


@dataclass
class DataConfig:
    source: Source = required()
    path: str = required()
    protocol: Protocol = required()
    val_fraction: float = bounded(gt=0.0, lt=1.0)
    seed: int = required()

    @property
    def family(self) -> Family:
        """The dataset family in registered model names: a CSV and a folder of FER2013 are the same data."""
        return Family.synthetic if self.source == Source.synthetic else Family.fer2013


@dataclass
class SyntheticDataConfig(DataConfig):
    n_train: int = bounded(ge=70)
    n_test: int = bounded(ge=7)
    noise: float = bounded(ge=0.0, le=1.0)
    max_rotation: float = bounded(ge=0.0, le=90.0)


@dataclass
class FileDataConfig(DataConfig):
    max_skipped_fraction: float = bounded(ge=0.0, le=1.0)
    min_side: int = bounded(ge=1)  # images smaller than this (either side) are skipped: not a face crop
    max_side: int = bounded(ge=1)  # ... and larger than this, or
    max_aspect: float = bounded(ge=1.0)  # ... more elongated than this (long side / short side)

    def check(self) -> str | None:
        if self.min_side > self.max_side:
            return f"min_side = {self.min_side}: must be <= data.max_side ({self.max_side})"
        return None


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    Source.synthetic: SyntheticDataConfig,
    Source.fer2013: FileDataConfig,
    Source.fer2013_csv: FileDataConfig,
}


# ---------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = required()


@dataclass
class SeedCNNConfig(ModelConfig):
    """The seed project's CNN, exactly; only its dropout rates are exposed."""

    conv_dropout: float = bounded(ge=0.0, lt=1.0)


def per_stage(key: str, counts: list[int], stages: int) -> str | None:
    """The rule every staged architecture shares: one count from 1 to 4 per stage of `filters`."""
    if len(counts) != stages or not all(1 <= c <= 4 for c in counts):
        return f"{key} = {counts}: must hold one count from 1 to 4 per stage ({stages} stages)"
    return None


@dataclass
class ConvNetConfig(ModelConfig):
    """A BN-ReLU VGG-style net: `filters[i]` channels and `convs[i]` 3x3 convs in stage i, max-pool between."""

    filters: list[int] = required()
    convs: list[int] = required()
    stem_stride: int = bounded(ge=1, le=2)
    separable: bool = required()
    dense: int = bounded(ge=0)
    dropout: float = bounded(ge=0.0, lt=1.0)

    def check(self) -> str | None:
        """Cross-field rules, reported like a bound: at least one stage, one entry of `convs` per stage."""
        if not self.filters or not all(f >= 1 for f in self.filters):
            return f"filters = {self.filters}: must list at least one stage, each with >= 1 channel"
        return per_stage("convs", self.convs, len(self.filters))


@dataclass
class ResNetSEConfig(ModelConfig):
    """A ResNet of basic blocks (two 3x3 convs and a shortcut), each gated by squeeze-and-excitation:
    stage i has `blocks[i]` blocks of `filters[i]` channels, and each stage after the first halves the
    resolution with a strided first conv (the shortcut then a strided 1x1 conv)."""

    filters: list[int] = required()
    blocks: list[int] = required()
    se_ratio: int = bounded(ge=0)  # the SE gate's channel reduction (channels / ratio hidden units); 0 = no SE
    dropout: float = bounded(ge=0.0, lt=1.0)

    def check(self) -> str | None:
        """Cross-field rules: one block count per stage, and no more stages than 48 px can halve into."""
        if not 1 <= len(self.filters) <= 5 or not all(f >= 1 for f in self.filters):
            return f"filters = {self.filters}: must list 1 to 5 stages (48 px halves to 3), each with >= 1 channel"
        return per_stage("blocks", self.blocks, len(self.filters))


MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {
    "seed_cnn": SeedCNNConfig,
    "convnet": ConvNetConfig,
    "resnet_se": ResNetSEConfig,
}


# ---------------------------------------------------------------- train
class Optimizer(StrEnum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"
    onecycle = "onecycle"


class Precision(StrEnum):
    """Keras dtype policies. `mixed_bfloat16` speeds up CPUs with AVX512-BF16/AMX; `mixed_float16` GPUs;
    `auto` picks mixed_bfloat16 where the CPU has those instructions, else float32."""

    auto = "auto"
    float32 = "float32"
    mixed_bfloat16 = "mixed_bfloat16"
    mixed_float16 = "mixed_float16"


class Distribute(StrEnum):
    """`mirrored`: one replica per visible GPU (or per logical CPU device) in this process
    (tf.distribute.MirroredStrategy); `multi_worker`: one replica per process of a cluster that `TF_CONFIG`
    describes (tf.distribute.MultiWorkerMirroredStrategy)."""

    none = "none"
    mirrored = "mirrored"
    multi_worker = "multi_worker"


class ClassWeight(StrEnum):
    none = "none"
    balanced = "balanced"
    sqrt = "sqrt"


@dataclass
class AugmentConfig:
    flip: bool = required()
    shift: float = bounded(ge=0.0, le=0.5)
    rotation: float = bounded(ge=0.0, le=0.5)
    zoom: float = bounded(ge=0.0, lt=1.0)
    brightness: float = bounded(ge=0.0, le=1.0)
    contrast: float = bounded(ge=0.0, lt=1.0)
    mixup: float = bounded(ge=0.0, le=1.0)
    cutmix: float = bounded(ge=0.0, le=1.0)
    erasing: float = bounded(ge=0.0, le=1.0)


@dataclass
class DistillConfig:
    """Knowledge distillation: the targets mix the labels with the scores of teachers this pipeline trained.

    Teachers are registered versions, `models:/<name>/<version>` (immutable, unlike an alias), or the
    bundled release by its name, `release:<release>` (so a fresh clone can distil from the shipped model;
    the name pins it, and a newer release fails the run rather than silently changing the teacher), or a
    committed teacher, `teacher:<name>` (`models/teachers/<name>/`, sha256-pinned by its card), so that an
    ensemble can be gathered across sessions and hosts. Their
    averaged scores on each training face (softened by `temperature`) get `weight` in the targets.
    """

    teachers: list[str] = required()
    weight: float = bounded(ge=0.0, le=1.0)
    temperature: float = bounded(gt=0.0)

    def check(self) -> str | None:
        for i, uri in enumerate(self.teachers):
            if uri.startswith(("release:", "teacher:")) and uri.partition(":")[2]:
                continue
            _name, slash, version = uri.removeprefix("models:/").partition("/")
            if not uri.startswith("models:/") or not slash or not version.isdigit() or "@" in uri:
                return (f"teachers[{i}] = {uri}: must be models:/<name>/<version> (an alias can move), "
                        "release:<release name> or teacher:<name> (a folder of models/teachers/)")
        if self.teachers and not self.weight:
            return "weight = 0.0: must be > 0 when teachers are given"
        return None


@dataclass
class TrainConfig:
    epochs: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)
    optimizer: Optimizer = required()
    lr: float = bounded(gt=0.0)
    weight_decay: float = bounded(ge=0.0)
    momentum: float = bounded(ge=0.0, lt=1.0)
    schedule: Schedule = required()
    warmup_epochs: int = bounded(ge=0)
    label_smoothing: float = bounded(ge=0.0, lt=1.0)
    class_weight: ClassWeight = required()
    early_stopping_patience: int = bounded(ge=0)
    keep_best: bool = required()
    seed: int = required()
    deterministic: bool = required()
    precision: Precision = required()
    distribute: Distribute = required()
    max_train_samples: int = bounded(ge=0)
    time_budget_min: float = bounded(ge=0.0)
    include_val: bool = required()  # fit on train + val (the recipe was chosen on val before): no selection
    sam_rho: float = bounded(ge=0.0)  # sharpness-aware minimisation's radius; 0 = plain steps
    members: int = bounded(ge=1)  # networks from seeds seed, seed + 1, ..., averaged into one model
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig())

    def check(self) -> str | None:
        if self.include_val and (self.keep_best or self.early_stopping_patience):
            return ("include_val = true: val is then training data, so train.keep_best and "
                    "train.early_stopping_patience must be off (false / 0)")
        if self.distribute == Distribute.multi_worker and self.members > 1:
            return (f"members = {self.members}: must be 1 with train.distribute = multi_worker (every worker would "
                    "write each finished member to the same checkpoint files)")
        if self.distribute == Distribute.multi_worker and self.time_budget_min:
            return (f"time_budget_min = {self.time_budget_min:g}: must be 0 with train.distribute = multi_worker "
                    "(each worker would pace its learning rate and stop by its own clock, out of step with the "
                    "others); give train.epochs instead")
        return None


# ---------------------------------------------------------------- quantize / benchmark / evaluate
class Variant(StrEnum):
    float32 = "float32"
    float16 = "float16"
    dynamic = "dynamic"
    int8 = "int8"


class Metric(StrEnum):
    accuracy = "accuracy"
    macro_f1 = "macro_f1"


@dataclass
class ViewsConfig:
    """Test-time views the exported model averages: the face, a zoomed centre, and the mirror of each."""

    flip: bool = required()
    zoom: int = bounded(ge=0, le=47)  # 0 = off; else the side in pixels of a central crop scored too


@dataclass
class QuantizeConfig:
    variants: list[Variant] = required()
    register: Variant = required()
    representative_samples: int = bounded(ge=1)
    model_name: str = required()
    views: ViewsConfig = field(default_factory=ViewsConfig)

    def check(self) -> str | None:
        if not self.variants:
            return "variants = []: must list at least one of " + ", ".join(Variant)
        if self.register not in self.variants:
            return (f"register = {self.register!s}: must be one of quantize.variants "
                    f"({', '.join(map(str, self.variants))})")
        return None


Detector = StrEnum("Detector", {name: name for name in DETECTORS})  # the runner's registry of detectors


@dataclass
class BenchmarkConfig:
    runs: int = bounded(ge=1)
    warmup: int = bounded(ge=0)
    keras_runs: int = bounded(ge=1)
    detector: Detector = required()


class NewTestSplit(StrEnum):
    """What promotion does when the champion was scored on another test split (not comparable)."""

    keep = "keep"
    promote = "promote"


class Floor(StrEnum):
    """The score a version must beat to be promoted at all: the raw-pixel baseline, chance (1 / classes), none."""

    baseline = "baseline"
    chance = "chance"
    none = "none"


@dataclass
class EvaluateConfig:
    promote_metric: Metric = required()
    new_test_split: NewTestSplit = required()
    floor: Floor = required()
    sample_grid: int = bounded(ge=0, le=100)
    baseline_samples: int = bounded(ge=0)

    def check(self) -> str | None:
        if self.floor == Floor.baseline and not self.baseline_samples:
            return "floor = baseline: needs evaluate.baseline_samples > 0 (or floor: chance / none)"
        return None


@dataclass
class MlflowConfig:
    tracking_uri: str | None = required()
    experiment_name: str = required()
    timeout_s: float = bounded(gt=0.0)
    retries: int = bounded(ge=0)


@dataclass
class Params:
    """The whole params.yaml, as the stages see it."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    quantize: QuantizeConfig
    benchmark: BenchmarkConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig


# ---------------------------------------------------------------- loading
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
    return Params(**typed)


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


def compose(overrides: list[str] | None = None, config_name: str = "config",
            conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose `conf/` exactly as `dvc exp run` does (Hydra compose, then resolve)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return OmegaConf.create(OmegaConf.to_container(cfg))  # plain, like a loaded params.yaml (not struct)


USAGE = """usage: python -m pipeline.config [key=value ...] [group=option ...]
Compose conf/ (Hydra) with the overrides and write params.yaml, as `make params` and `dvc exp run -S` do.
  groups: {groups}
  e.g.    python -m pipeline.config experiment=tiny train.lr=0.003"""


def composition_error(error: Exception, overrides: list[str]) -> str:
    """One line for an override that Hydra cannot compose (its own message is a traceback of ~60 lines): an
    unknown group option with the group's options, an unknown key with the keys allowed where it points, an
    override that does not parse."""
    from hydra.errors import MissingConfigException, OverrideParseException

    first = first_line(error)
    if isinstance(error, MissingConfigException) and "Could not find '" in first:
        group, _, option = first.split("Could not find '", 1)[1].rstrip("'").rpartition("/")
        options = sorted(f.stem for f in (CONF_DIR / group).glob("*.yaml"))
        return f"{group}={option}: no such option in conf/{group}/ (options: {', '.join(options)})"
    if isinstance(error, OverrideParseException):
        bad = next((o for o in overrides if o.split("=", 1)[0] in str(error) or o in str(error)), " ".join(overrides))
        return f"{bad}: not an override of the form key=value ({first})"
    full_key = getattr(error.__cause__, "full_key", None)
    if full_key:
        parent = str(full_key).rpartition(".")[0]
        where = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == full_key or o.startswith(f"{full_key}.")]
        with contextlib.suppress(Exception):
            good = compose([o for o in overrides if o not in where])
            node = OmegaConf.select(good, parent) if parent else good
            allowed = ", ".join(sorted(str(k) for k in node))
            return (f"{' '.join(where) or full_key}: unknown key '{full_key}' "
                    f"(allowed in {parent or 'the top level'}: {allowed})")
    return f"{' '.join(overrides)}: {first}"


def main() -> None:
    """`python -m pipeline.config [overrides]`: regenerate params.yaml from conf/ (what `make params` runs)."""
    import sys

    from hydra.errors import HydraException

    from pipeline.files import write_text

    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        groups = sorted(d.name for d in CONF_DIR.iterdir() if d.is_dir())
        print(USAGE.format(groups=", ".join(groups)))
        return
    try:
        cfg = compose(sys.argv[1:])
    except HydraException as e:
        raise SystemExit(f"error: {composition_error(e, sys.argv[1:])}") from None
    try:
        parse_params(cfg)
    except ConfigError as e:
        raise SystemExit(f"error: conf/: {e}") from None
    write_text(PARAMS_FILE, OmegaConf.to_yaml(cfg))
    print(f"wrote {PARAMS_FILE} from {CONF_DIR}" + (f" with {' '.join(sys.argv[1:])}" if sys.argv[1:] else ""))


if __name__ == "__main__":
    main()
