"""The schema of each params.yaml section: types and bounds only, the values live in conf/ (one source of
defaults), so a missing key is an error rather than a silent default. Rules across fields are each schema's
`check()`, reported like a bound; the toolkit that applies them is pipeline/inference/schema.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.inference.contract import Family
from pipeline.inference.detector_config import DETECTORS
from pipeline.inference.schema import bounded, required


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
class TeacherFitConfig:
    """Teachers the train stage fits itself, before the student: `count` networks of `model` (a model section,
    e.g. `- /model@train.distill.fit.model: fer_vgg` in a preset), seeds `seed`, `seed` + 1, ..., each for
    `time_budget_min` with the student's own train settings and no distillation, their average scored through
    `views`. So one `dvc exp run` rebuilds a release recipe end to end, teachers through student; a finished
    teacher is kept (models/checkpoints/teachers/) and not trained again after an interruption, nor for another
    student. 0 = none."""

    count: int = bounded(ge=0)
    seed: int = required()
    time_budget_min: float = bounded(ge=0.0)
    model: Any = None  # validated against the schema its `name` picks (pipeline/config/loading.py)
    views: ViewsConfig = field(default_factory=lambda: ViewsConfig())


@dataclass
class DistillConfig:
    """Knowledge distillation: the targets mix the labels with the scores of teachers this pipeline trained.

    Teachers are registered versions, `models:/<name>/<version>` (immutable, unlike an alias), or the
    bundled release by its name, `release:<release>` (so a fresh clone can distil from the shipped model;
    the name pins it, and a newer release fails the run rather than silently changing the teacher), or a
    committed teacher, `teacher:<name>` (`models/teachers/<name>/`, sha256-pinned by its card), so that an
    ensemble can be gathered across sessions and hosts; or they are fitted in the stage first (`fit`). Their
    averaged scores on each training face (softened by `temperature`) get `weight` in the targets.
    """

    teachers: list[str] = required()
    weight: float = bounded(ge=0.0, le=1.0)
    temperature: float = bounded(gt=0.0)
    fit: TeacherFitConfig = field(default_factory=lambda: TeacherFitConfig())

    def check(self) -> str | None:
        for i, uri in enumerate(self.teachers):
            if uri.startswith(("release:", "teacher:")) and uri.partition(":")[2]:
                continue
            _name, slash, version = uri.removeprefix("models:/").partition("/")
            if not uri.startswith("models:/") or not slash or not version.isdigit() or "@" in uri:
                return (f"teachers[{i}] = {uri}: must be models:/<name>/<version> (an alias can move), "
                        "release:<release name> or teacher:<name> (a folder of models/teachers/)")
        if self.teachers and self.fit.count:
            return (f"fit.count = {self.fit.count}: must be 0 when teachers are given ({len(self.teachers)}): "
                    "distil from files or from teachers fitted here, not both")
        if (self.teachers or self.fit.count) and not self.weight:
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
