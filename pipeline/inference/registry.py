"""Which model runs, fetched how: a local .tflite, a registered version, or the release bundled in the package.

One resolution rule for the runner and the Python API:
1. an explicit `model` (a `models:/` URI or a path to a .tflite with its labels.json) wins;
2. else the tracking store's `models:/fer-expression-fer2013@champion`, when the store has one;
3. else the FER2013 release model that ships inside this package (`release/`).
A synthetic-data model therefore runs only when asked for by name, and then says so.

From the registry only the .tflite and its labels.json are downloaded (never a pickle), and the file's
sha256 must equal the one the quantize stage recorded at registration. Promotion (the `champion` alias)
lives here too: it is part of the same contract. MLflow is imported only when a registry is used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.inference.classifier import ModelError, read_labels_file
from pipeline.inference.contract import (
    CHAMPION,
    LABELS_FILE,
    MIN_FACE,
    MODEL_FILE,
    Family,
    Tag,
    default_model_uri,
    is_model_uri,
    metric_tag,
    parse_model_uri,
)

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
    card = RELEASE_DIR / "model_card.json"
    if card.is_file():
        import json

        info = json.loads(card.read_text())
        resolved.uri = f"release:{info.get('release', 'fer2013')}"
        resolved.trained_on = info.get("family", resolved.trained_on)
        resolved.why = info.get("summary", "")
    if pinned and resolved.uri != pinned:
        raise ModelError(f"{pinned}: the bundled release is {resolved.uri} now")
    return resolved


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


def download_registered(uri: str, tracking_uri: str, cache_dir: str | Path | None = None) -> ResolvedModel:
    """A registered version's .tflite and labels.json, sha256-checked; ModelNotRegistered if there is none."""
    _quiet_client_env()
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        ref = parse_model_uri(uri)
    except ValueError as e:
        raise ModelError(str(e)) from None
    where = redact(tracking_uri)
    if problem := sqlite_store_problem(tracking_uri):
        raise ModelError(f"{uri}: {problem}")
    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        mv = (client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias
              else client.get_model_version(ref.name, ref.version))
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no such name / alias
            raise ModelNotRegistered(f"{uri}: not in the registry at {where} ({e.error_code})") from None
        reason = (str(e.message).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{uri}: the registry at {where} did not answer ({e.error_code}: {reason})") from None
    except Exception as e:  # a store that is not a store (garbage file, wrong server): one line
        reason = redact((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]
        raise ModelError(f"{uri}: the registry at {where} failed ({reason})") from None
    source = client.get_model_version_download_uri(mv.name, mv.version)
    dest = Path(cache_dir or Path.home() / ".cache" / "fer-pipeline") / mv.name / str(mv.version)
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    try:
        for name in (MODEL_FILE, LABELS_FILE):
            files[name] = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"{source}/artifacts/{name}", dst_path=str(dest), tracking_uri=tracking_uri))
    except (MlflowException, OSError) as e:  # registered, but its files cannot be fetched
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{uri}: download from {where} failed ({redact(reason)})") from None
    expected = mv.tags.get(Tag.tflite_sha256)
    actual = sha256_of(files[MODEL_FILE])
    if expected != actual:
        raise ModelError(f"{uri}: downloaded model sha256 {actual[:12]} does not match the registered "
                         f"{(expected or 'none')[:12]}; refusing to run it")
    meta = read_labels_file(files[LABELS_FILE])
    family = mv.tags.get(Tag.data_source)
    trained_on = meta.get("trained_on") or (Family.synthetic.value if family == "synthetic" else
                                            Family.fer2013.value if family else None)
    return ResolvedModel(files[MODEL_FILE], list(meta["labels"]), uri, str(mv.version), trained_on)


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
        resolved, reason = None, "the tracking store does not exist"
        if _store_exists(tracking_uri):
            try:
                resolved = download_registered(champion, tracking_uri, cache_dir)
                resolved.why = f"{champion} v{resolved.version} (the champion at {redact(tracking_uri)})"
            except ModelNotRegistered:
                reason = "it has no FER2013 champion"
            except ModelError as e:
                reason = f"it failed: {e}"
        if resolved is None:
            try:
                resolved = release_model()
            except ModelError as e:
                raise ModelError(f"no model to run: no champion at {redact(tracking_uri)} ({reason}) and no "
                                 f"bundled release model ({e}); pass model=path/to/model.tflite") from None
            summary = f": {resolved.why}" if resolved.why else ""
            resolved.why = (f"the bundled release model{summary} (no champion at {redact(tracking_uri)}: "
                            f"{reason})")
    if resolved.synthetic:
        resolved.why += "; trained on SYNTHETIC faces: its labels mean nothing for real faces"
    return resolved


# ---------------------------------------------------------------- promotion
def promote(client: Any, name: str, version: str, metric: str, value: float, test_digest: str,
            lock_path: Path, on_new_test_split: str = "keep", floor: float | None = None) -> dict[str, Any]:
    """Move `champion` to this version if it beats the current one on `metric` on the same test split.

    Ties keep the current champion. A champion scored on another test split is not comparable: it is
    kept unless `on_new_test_split` is "promote". A version at or below `floor` (the stage's own baseline)
    is never promoted, even into an empty registry. A file lock serialises read-compare-set across
    parallel experiments.
    """
    from filelock import FileLock
    from mlflow.exceptions import MlflowException

    with FileLock(str(lock_path), timeout=120):
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            champion = None
        decision: dict[str, Any] = {"model": name, "version": str(version), "metric": metric, "value": value}
        if floor is not None and value <= floor:
            promote_it, reason = False, f"{metric} {value:.4f} is not above the floor {floor:.4f}"
        elif champion is None:
            promote_it, reason = True, "no champion yet"
        elif str(champion.version) == str(version):
            promote_it, reason = False, "already champion"
        elif champion.tags.get(Tag.test_digest) != test_digest:
            promote_it = on_new_test_split == "promote"
            reason = (f"champion v{champion.version} was evaluated on another test split; not comparable, "
                      + ("replaced (evaluate.new_test_split=promote)" if promote_it
                         else "kept (evaluate.new_test_split=keep)"))
        elif (held := champion.tags.get(metric_tag(metric))) is None:  # never read a missing score as -inf
            promote_it, reason = False, f"champion v{champion.version} has no {metric_tag(metric)} tag; kept"
        else:
            best = float(held)
            promote_it = value > best
            reason = f"{metric} {value:.4f} {'>' if promote_it else '<='} champion v{champion.version} {best:.4f}"
            decision["champion_value"] = best
        if promote_it:
            client.set_registered_model_alias(name, CHAMPION, str(version))
        decision.update(promoted=promote_it, reason=reason,
                        champion=str(version) if promote_it else (str(champion.version) if champion else None))
        return decision


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
