"""Which model runs, fetched how: a local .tflite, a registered version, or the release bundled in the package.

One resolution rule for the runner and the Python API:
1. an explicit `model` (a `models:/` URI or a path to a .tflite with its labels.json) wins;
2. else the tracking store's `models:/fer-expression-fer2013@champion`, when the store has one, unless its
   recorded test accuracy is below the bundled release model's on the same test split (a champion promoted
   before the release took part in promotion): the default a user gets never silently gets worse than what ships;
3. else the FER2013 release model that ships inside this package (`release/`).
A synthetic-data model therefore runs only when asked for by name, and then says so. `why` says which model
runs and why it won: its test figure against the release model's when the two were scored on the same split.

From the registry only the .tflite and its labels.json are downloaded (never a pickle), and the file's
sha256 must equal the one the quantize stage recorded at registration. Promotion (the `champion` alias)
lives here too: it is part of the same contract. MLflow is imported only when a registry is used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.inference.classifier import ModelError, read_labels_file
from pipeline.inference.contract import (
    CHAMPION,
    CLASSES,
    LABELS_FILE,
    MIN_FACE,
    MODEL_FILE,
    Family,
    Tag,
    default_model_uri,
    is_model_uri,
    metric_tag,
    parse_model_uri,
    release_metric_tag,
)
from pipeline.inference.errors import first_line

RELEASE_DIR = Path(__file__).parent / "release"
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


class ModelNotRegistered(ModelError):
    """The registry answered but holds no such name, alias or version, so a caller may fall back."""


def redact(text: str) -> str:
    """`text` with the user:password of every URL in it replaced by ***: for logs, errors and reports.

    Applied to whole messages, not just URIs, because client errors quote the URL they failed on.
    """
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


@dataclass
class ResolvedModel:
    tflite: Path
    labels: list[str]
    uri: str  # what runs: a models:/ URI, a path, or "release:<name>"
    version: str | None = None
    trained_on: str | None = None  # the data family when known ("fer2013", "synthetic")
    why: str = ""  # one line for the user: which model runs and why
    tags: dict[str, str] = field(default_factory=dict)  # a registered version's tags (its scores, test digest)

    @property
    def synthetic(self) -> bool:
        return self.trained_on == Family.synthetic


def _local(path: Path, uri: str) -> ResolvedModel:
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    meta = read_labels_file(path.with_name(LABELS_FILE))
    return ResolvedModel(path, list(meta["labels"]), uri, trained_on=meta.get("trained_on"))


def release_model(pinned: str | None = None) -> ResolvedModel:
    """The release model bundled with the package (see release/MODEL_CARD.md); with `pinned`
    (`release:<name>`), ModelError unless the bundled release is that one."""
    resolved = _local(RELEASE_DIR / MODEL_FILE, "release")
    if (RELEASE_DIR / "model_card.json").is_file():
        info = release_card()
        resolved.uri = f"release:{info.get('release', 'fer2013')}"
        resolved.trained_on = info.get("family", resolved.trained_on)
        resolved.why = info.get("summary", "")
    if pinned and resolved.uri != pinned:
        raise ModelError(f"{pinned}: the bundled release is {resolved.uri} now")
    return resolved


def teacher_model(name: str, folder: Path) -> ResolvedModel:
    """A committed distillation teacher, `<folder>/<name>/` (model.tflite, labels.json, model_card.json).

    Teachers are files in git, so the name alone pins one only if the file is still the one its card
    describes: a sha256 that differs (an edited or half-copied file) is a ModelError, not a silent new teacher.
    """
    import json

    home = folder / name
    if not (home / MODEL_FILE).is_file():
        known = sorted(p.name for p in folder.glob("*") if (p / MODEL_FILE).is_file()) if folder.is_dir() else []
        raise ModelError(f"teacher:{name}: no {home / MODEL_FILE} (teachers in {folder}: "
                         f"{', '.join(known) or 'none'})")
    resolved = _local(home / MODEL_FILE, f"teacher:{name}")
    try:
        expected = json.loads((home / "model_card.json").read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        raise ModelError(f"{home / 'model_card.json'}: missing or unreadable; it pins the teacher's sha256") from None
    if sha256_of(resolved.tflite) != expected:
        raise ModelError(f"{resolved.tflite}: sha256 differs from its model_card.json: not the teacher it names")
    return resolved


def teacher(uri: str, tracking_uri: str, folder: Path) -> ResolvedModel:
    """A distillation teacher by its config name: `teacher:<folder>` (committed), `release:<name>` (bundled, if
    still the one named) or a `models:/` URI (registered); each file sha256-checked."""
    if uri.startswith("teacher:"):
        model = teacher_model(uri.removeprefix("teacher:"), folder)
    elif uri.startswith("release:"):
        model = release_model(uri)
    else:
        model = download_registered(uri, tracking_uri)
    if model.labels != list(CLASSES):  # scores are averaged column by column: one class order for all
        raise ModelError(f"{uri}: labels {model.labels}, not the pipeline's class order {list(CLASSES)}")
    return model


def release_card() -> dict[str, Any]:
    """The bundled release's model_card.json ({} when absent or unreadable: the card only adds figures)."""
    import json

    try:
        card = json.loads((RELEASE_DIR / "model_card.json").read_text())
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def against_release(tags: dict[str, str], card: dict[str, Any]) -> tuple[bool, str]:
    """Whether a champion with these version tags should run rather than the bundled release model, and a
    clause for the user saying how the two compare.

    A champion whose evaluate scored the release model beside it (`release_test_*` tags) beat it at
    promotion, so it runs. One promoted before that rule existed runs unless the release card's figure
    was measured on the same test split (equal digests) and is higher: comparing figures from different
    splits would mean nothing, so then the clause says they were not compared.
    """
    accuracy, digest = _float(tags.get(Tag.test_accuracy)), tags.get(Tag.test_digest) or ""
    if accuracy is None:
        return True, "no recorded test accuracy, so not compared with the bundled release model"
    figure = f"{_percent(accuracy)} on test split {digest[:12] or '(unknown)'}"
    if (release := _float(tags.get(release_metric_tag("accuracy")))) is not None:
        relation = "over" if accuracy > release else "promoted on another metric beside"
        return True, f"{figure}, {relation} the bundled release model's {_percent(release)}"
    test, data = card.get("test"), card.get("data")
    card_accuracy = _float(str(test.get("accuracy"))) if isinstance(test, dict) else None
    if card_accuracy is None or not digest or not isinstance(data, dict) or data.get("test_digest") != digest:
        return True, f"{figure}; not compared with the bundled release model (not scored on the same test split)"
    if accuracy < card_accuracy:
        return False, (f"{figure}, below the bundled release model's {_percent(card_accuracy)} on the same split")
    return True, f"{figure}, over the bundled release model's {_percent(card_accuracy)}"


def _store_exists(tracking_uri: str) -> bool:
    """False for a sqlite:/// file that does not exist: an empty store, and opening it would create one."""
    return not (tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file())


def sqlite_store_problem(tracking_uri: str) -> str | None:
    """Why an existing `sqlite:///` store must not be opened, or None.

    MLflow would turn a 0-byte `mlflow.db` (a disk that filled up, a bad copy) into a fresh, empty store, and
    every run, version and alias it held would be gone without a word; a file that is not SQLite is some
    other file. Either way the file is left as it is, for the user to restore or move aside.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if not path.is_file():
        return None
    if path.stat().st_size == 0:
        return (f"{path}: the MLflow store is empty (0 bytes), so its runs, models and aliases are gone; "
                "restore it from a backup, or delete it to start a new store")
    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            return (f"{path}: not an SQLite file, so not an MLflow store; it is never replaced: move it aside "
                    "to start a new one, or restore it from a backup")
    return None


def _quiet_client_env() -> None:
    for key, value in {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(key, value)


def _registered_version(uri: str, ref: Any, tracking_uri: str) -> tuple[Any, Any]:
    """The client and the version `ref` names; ModelNotRegistered if the registry has none, else one line."""
    import mlflow
    from mlflow.exceptions import MlflowException

    where = redact(tracking_uri)
    if problem := sqlite_store_problem(tracking_uri):
        raise ModelError(f"{uri}: {problem}")
    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        return client, (client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias
                        else client.get_model_version(ref.name, ref.version))
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no such name / alias
            raise ModelNotRegistered(f"{uri}: not in the registry at {where} ({e.error_code})") from None
        reason = (str(e.message).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{uri}: the registry at {where} did not answer ({e.error_code}: {reason})") from None
    except Exception as e:  # a store that is not a store (garbage file, wrong server): one line
        raise ModelError(f"{uri}: the registry at {where} failed ({redact(first_line(e))[:200]})") from None


def download_registered(uri: str, tracking_uri: str, cache_dir: str | Path | None = None) -> ResolvedModel:
    """A registered version's .tflite and labels.json, sha256-checked; ModelNotRegistered if there is none."""
    _quiet_client_env()
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        ref = parse_model_uri(uri)
    except ValueError as e:
        raise ModelError(str(e)) from None
    client, mv = _registered_version(uri, ref, tracking_uri)
    source = client.get_model_version_download_uri(mv.name, mv.version)
    dest = Path(cache_dir or Path.home() / ".cache" / "fer-pipeline") / mv.name / str(mv.version)
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    try:
        for name in (MODEL_FILE, LABELS_FILE):
            files[name] = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"{source}/artifacts/{name}", dst_path=str(dest), tracking_uri=tracking_uri))
    except (MlflowException, OSError) as e:  # registered, but its files cannot be fetched
        raise ModelError(f"{uri}: download from {redact(tracking_uri)} failed ({redact(first_line(e))})") from None
    expected = mv.tags.get(Tag.tflite_sha256)
    actual = sha256_of(files[MODEL_FILE])
    if expected != actual:
        raise ModelError(f"{uri}: downloaded model sha256 {actual[:12]} does not match the registered "
                         f"{(expected or 'none')[:12]}; refusing to run it")
    meta = read_labels_file(files[LABELS_FILE])
    family = mv.tags.get(Tag.data_source)
    trained_on = meta.get("trained_on") or (Family.synthetic.value if family == "synthetic" else
                                            Family.fer2013.value if family else None)
    return ResolvedModel(files[MODEL_FILE], list(meta["labels"]), uri, str(mv.version), trained_on,
                         tags={str(k): str(v) for k, v in (mv.tags or {}).items()})


def sha256_of(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(model: str | None, tracking_uri: str, cache_dir: str | Path | None = None) -> ResolvedModel:
    """The model to run by the rule in this module's docstring, with `why` filled in; ModelError if none."""
    if model:
        resolved = (download_registered(model, tracking_uri, cache_dir) if is_model_uri(model)
                    else _local(Path(model), model))
        resolved.why = f"{model} (asked for with model=)"
    else:
        champion = default_model_uri()
        resolved, reason = None, f"no champion at {redact(tracking_uri)}: the tracking store does not exist"
        if _store_exists(tracking_uri):
            try:
                resolved = download_registered(champion, tracking_uri, cache_dir)
                runs, clause = against_release(resolved.tags, release_card())
                where = f"{champion} v{resolved.version} at {redact(tracking_uri)}"
                if runs:
                    resolved.why = f"{champion} v{resolved.version} (the champion at {redact(tracking_uri)}: {clause})"
                elif (RELEASE_DIR / MODEL_FILE).is_file():
                    resolved, reason = None, f"the champion {where} scored {clause}"
                else:  # no release to prefer: the champion runs, and the line says it is the worse one
                    resolved.why = f"{where} (the champion: {clause}; the bundled release model is missing)"
            except ModelNotRegistered:
                reason = f"no champion at {redact(tracking_uri)}: it has no FER2013 champion"
            except ModelError as e:
                reason = f"no champion at {redact(tracking_uri)}: it failed: {e}"
        if resolved is None:
            try:
                resolved = release_model()
            except ModelError as e:
                raise ModelError(f"no model to run: {reason}; and no bundled release model ({e}); "
                                 "pass model=path/to/model.tflite") from None
            summary = f": {resolved.why}" if resolved.why else ""
            resolved.why = f"the bundled release model{summary} ({reason})"
    if resolved.synthetic:
        resolved.why += "; trained on SYNTHETIC faces: its labels mean nothing for real faces"
    return resolved


# ---------------------------------------------------------------- promotion
def promote(client: Any, name: str, version: str, metric: str, value: float, test_digest: str,
            lock_path: Path, on_new_test_split: str = "keep", floor: float | None = None,
            release: tuple[str, float] | None = None) -> dict[str, Any]:
    """Move `champion` to this version if it beats the current one on `metric` on the same test split, and
    `release` (the bundled release model's uri and its `metric` on this same split) when given.

    Ties keep the current champion. A champion scored on another test split is not comparable: it is
    kept unless `on_new_test_split` is "promote". A version at or below `floor` (the stage's own baseline)
    is never promoted, even into an empty registry, and neither is one at or below the release model: the
    runner would otherwise swap the model a user gets for a worse one without a word (a 4-minute smoke run
    into an empty registry). A file lock serialises read-compare-set across parallel experiments.
    """
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    with FileLock(str(lock_path), timeout=120):
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            champion = None
        decision: dict[str, Any] = {"model": name, "version": str(version), "metric": metric, "value": value}
        if release is not None:
            decision.update(release_model=release[0], release_value=release[1])
        promote_it, reason, held = decide(champion, str(version), metric, value, test_digest, on_new_test_split,
                                          floor, release)
        if held is not None:
            decision["champion_value"] = held
        if promote_it:
            client.set_registered_model_alias(name, CHAMPION, str(version))
        decision.update(promoted=promote_it, reason=reason,
                        champion=str(version) if promote_it else (str(champion.version) if champion else None))
        return decision


def decide(champion: Any, version: str, metric: str, value: float, test_digest: str, on_new_test_split: str,
           floor: float | None, release: tuple[str, float] | None) -> tuple[bool, str, float | None]:
    """The promotion rule of `promote`, pure: (promote?, the reason in words, the champion's comparable score)."""
    over_release = "" if release is None else f" and > the bundled release model's {release[1]:.4f}"
    if floor is not None and value <= floor:
        return False, f"{metric} {value:.4f} is not above the floor {floor:.4f}", None
    if release is not None and value <= release[1] and not (champion and str(champion.version) == version):
        return False, (f"{metric} {value:.4f} <= the bundled release model's {release[1]:.4f} on this test split "
                       f"({release[0]}); " + (f"champion v{champion.version} kept" if champion else
                                             "no champion, so the release model stays the default")), None
    if champion is None:
        return True, "no champion yet" + (f"; {metric} {value:.4f} > the bundled release model's {release[1]:.4f}"
                                          if release else ""), None
    if str(champion.version) == version:
        return False, "already champion", None
    if champion.tags.get(Tag.test_digest) != test_digest:
        promote_it = on_new_test_split == "promote"
        return promote_it, (f"champion v{champion.version} was evaluated on another test split; not comparable, "
                            + ("replaced (evaluate.new_test_split=promote)" if promote_it
                               else "kept (evaluate.new_test_split=keep)") + (over_release if promote_it else "")), None
    if (held := champion.tags.get(metric_tag(metric))) is None:  # never read a missing score as -inf
        return False, f"champion v{champion.version} has no {metric_tag(metric)} tag; kept", None
    best = float(held)
    promote_it = value > best
    return promote_it, (f"{metric} {value:.4f} {'>' if promote_it else '<='} champion v{champion.version} {best:.4f}"
                        + (over_release if promote_it else "")), best


# What a registered version carries besides its .tflite and labels.json: the pyfunc (logged as code) and the
# files it imports, copied into the model's code/ folder so the model also loads outside this project.
SERVING_MODULE = Path(__file__).with_name("serving.py")
SERVING_CODE = tuple(Path(__file__).with_name(f"{m}.py") for m in ("classifier", "contract", "detectors", "images"))
DETECTOR_FILE = Path(__file__).parent / "assets" / "face_detection_short_range.tflite"  # = detectors.DEFAULT_MODEL


def _requirement(*distributions: str) -> str:
    """`name==version` of the first of `distributions` installed (OpenCV comes as one of two wheels)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in distributions:
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            continue
    return distributions[0]


def log_pyfunc(tflite: Path, registered_model_name: str, input_example: Any = None) -> Any:
    """Log `tflite` and its labels.json as an MLflow pyfunc (serving.py) and register it; MLflow's ModelInfo.

    The version serves 48x48 crops and whole images (BlazeFace travels with it), with ai-edge-litert, NumPy
    and OpenCV: no TensorFlow. Its signature declares no input schema (only the `min_face` parameter): the
    model takes two forms of input and checks them itself, so a bad request gets a short 400 rather than
    MLflow's schema error with the request in it. Fixed artifact names, so the runner can fetch exactly the
    .tflite and labels.json.
    """
    import shutil
    import tempfile
    import warnings

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import DataType, ParamSchema, ParamSpec

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow suggests type hints to validate inputs by; serving.py checks its two input forms itself
        warnings.filterwarnings("ignore", message=".*[Tt]ype hint.*")
        shutil.copy(tflite, Path(tmp) / MODEL_FILE)
        shutil.copy(Path(tflite).with_name(LABELS_FILE), Path(tmp) / LABELS_FILE)
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(SERVING_MODULE), code_paths=[str(p) for p in SERVING_CODE],
            artifacts={"tflite": str(Path(tmp) / MODEL_FILE), "labels": str(Path(tmp) / LABELS_FILE),
                       "detector": str(DETECTOR_FILE)},
            signature=ModelSignature(params=ParamSchema([ParamSpec("min_face", DataType.long, MIN_FACE)])),
            input_example=input_example,
            pip_requirements=[_requirement("ai-edge-litert"), _requirement("numpy"),
                              _requirement("opencv-python-headless", "opencv-python")],
            registered_model_name=registered_model_name,
        )
