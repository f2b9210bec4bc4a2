"""Which model runs: the resolution rule, downloads checked by sha256, the contract's URI forms, promotion.

A real SQLite MLflow store in a temporary folder, versions registered with the real client; the release
folder is a temporary one holding the tiny test classifier, so the rule is tested whatever ships.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest

from pipeline.inference import registry
from pipeline.inference.classifier import ModelError
from pipeline.inference.contract import ModelRef, Tag, metric_tag, parse_model_uri, registered_name


@pytest.fixture
def release(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "release"
    folder.mkdir()
    shutil.copy(tiny_model, folder / "model.tflite")
    (folder / "labels.json").write_text(json.dumps({"labels": json.loads(tiny_model.with_name("labels.json")
                                                                         .read_text()), "trained_on": "fer2013"}))
    (folder / "model_card.json").write_text(json.dumps({"release": "fer2013-test", "family": "fer2013",
                                                        "summary": "a stand-in release"}))
    monkeypatch.setattr(registry, "RELEASE_DIR", folder)
    return folder


def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def register(uri: str, tiny_model: Path, tmp_path: Path, name: str, family: str = "fer2013",
             alias: str | None = "champion", sha: str | None = None) -> str:
    """A registered version whose source folder holds artifacts/model.tflite and labels.json, as quantize makes."""
    source = tmp_path / f"src-{name}"
    (source / "artifacts").mkdir(parents=True)
    shutil.copy(tiny_model, source / "artifacts" / "model.tflite")
    shutil.copy(tiny_model.with_name("labels.json"), source / "artifacts" / "labels.json")
    Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(uri, uri)
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=source.as_uri(), tags={
        Tag.tflite_sha256: sha or registry.sha256_of(tiny_model), Tag.data_source: family}).version
    version = str(version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def test_an_explicit_path_wins_and_says_so(tiny_model: Path, tmp_path: Path, release: Path) -> None:
    resolved = registry.resolve(str(tiny_model), store(tmp_path))
    assert resolved.tflite == tiny_model and resolved.why == f"{tiny_model} (asked for with model=)"


def test_without_a_store_the_bundled_release_runs_and_no_store_is_created(tmp_path: Path, release: Path) -> None:
    resolved = registry.resolve(None, store(tmp_path))
    assert resolved.tflite == release / "model.tflite" and resolved.uri == "release:fer2013-test"
    assert resolved.why.startswith("the bundled release model: a stand-in release (no champion at sqlite:///")
    assert "the tracking store does not exist" in resolved.why
    assert not (tmp_path / "store").exists()


def test_the_stores_fer2013_champion_wins_over_the_release(tiny_model, tmp_path: Path, release: Path) -> None:
    uri = store(tmp_path)
    version = register(uri, tiny_model, tmp_path, "fer-expression-fer2013")
    resolved = registry.resolve(None, uri, cache_dir=tmp_path / "cache")
    assert resolved.version == version and resolved.trained_on == "fer2013"
    assert resolved.why == (f"models:/fer-expression-fer2013@champion v{version} (the champion at {uri}: no "
                            "recorded test accuracy, so not compared with the bundled release model)")
    assert resolved.tflite.is_relative_to(tmp_path / "cache")


def test_a_synthetic_champion_never_runs_unless_named(tiny_model, tmp_path: Path, release: Path) -> None:
    uri = store(tmp_path)
    register(uri, tiny_model, tmp_path, "fer-expression-synthetic", family="synthetic")
    auto = registry.resolve(None, uri, cache_dir=tmp_path / "cache")
    assert auto.uri == "release:fer2013-test" and "it has no FER2013 champion" in auto.why
    named = registry.resolve("models:/fer-expression-synthetic@champion", uri, cache_dir=tmp_path / "cache")
    assert named.synthetic and "trained on SYNTHETIC faces" in named.why


def test_a_download_whose_sha256_differs_is_refused(tiny_model, tmp_path: Path, release: Path) -> None:
    uri = store(tmp_path)
    version = register(uri, tiny_model, tmp_path, "fer-expression-fer2013", sha="0" * 64)
    with pytest.raises(ModelError, match="does not match the registered 000000000000; refusing to run it"):
        registry.resolve(f"models:/fer-expression-fer2013/{version}", uri, cache_dir=tmp_path / "cache")


def test_a_broken_store_is_one_line_and_the_auto_rule_goes_on_to_the_release(tmp_path: Path, release: Path) -> None:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(ModelError) as err:
        registry.resolve("models:/fer-expression-fer2013@champion", f"sqlite:///{db}")
    assert "\n" not in str(err.value) and str(db) in str(err.value)
    auto = registry.resolve(None, f"sqlite:///{db}")
    assert auto.uri == "release:fer2013-test" and "it failed" in auto.why


def test_no_release_and_no_champion_says_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "RELEASE_DIR", tmp_path / "nothing")
    with pytest.raises(ModelError, match=r"^no model to run: .*pass model=path/to/model.tflite$"):
        registry.resolve(None, store(tmp_path))


@pytest.mark.parametrize(("uri", "ref"), [
    ("models:/fer-expression-fer2013@champion", ModelRef("fer-expression-fer2013", alias="champion")),
    ("models:/m/12", ModelRef("m", version="12")),
])
def test_model_uris_parse_and_print_back(uri: str, ref: ModelRef) -> None:
    assert parse_model_uri(uri) == ref and str(ref) == uri


@pytest.mark.parametrize("uri", ["models:/", "models:/m", "models:/m/latest", "models:/@champion", "runs:/x"])
def test_malformed_model_uris_name_the_uri(uri: str) -> None:
    with pytest.raises(ValueError, match=re.escape(uri)):
        parse_model_uri(uri)


def test_names_and_tags_come_from_one_place() -> None:
    assert registered_name("fer-expression", "fer2013") == "fer-expression-fer2013"
    with pytest.raises(ValueError):
        registered_name("fer-expression", "imagenet")  # only the families the pipeline knows
    assert metric_tag("accuracy") is Tag.test_accuracy and metric_tag("macro_f1") is Tag.test_macro_f1


def _version(client, name: str, digest: str, accuracy: float | None = None) -> str:
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(name)
    tags = {Tag.test_digest: digest} | ({Tag.test_accuracy: str(accuracy)} if accuracy is not None else {})
    return str(client.create_model_version(name, source="file:///nowhere", tags=tags).version)


def test_promotion_needs_a_strict_gain_on_the_same_test_split(tmp_path: Path) -> None:
    uri = store(tmp_path)
    Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    client, lock = mlflow.MlflowClient(uri, uri), tmp_path / "promo.lock"

    def promote(version: str, value: float, digest: str, **kw) -> dict:
        return registry.promote(client, "promo", version, "accuracy", value, digest, lock, **kw)

    v1 = _version(client, "promo", "d1", 0.80)
    assert promote(v1, 0.80, "d1")["reason"] == "no champion yet"
    v2 = _version(client, "promo", "d1", 0.80)
    tie = promote(v2, 0.80, "d1")
    assert not tie["promoted"] and tie["champion"] == v1
    v3 = _version(client, "promo", "d1", 0.85)
    assert promote(v3, 0.85, "d1")["promoted"]
    v4 = _version(client, "promo", "other-split", 0.99)
    other = promote(v4, 0.99, "other-split")
    assert not other["promoted"] and "another test split" in other["reason"]
    assert str(client.get_model_version_by_alias("promo", "champion").version) == v3
    forced = promote(v4, 0.99, "other-split", on_new_test_split="promote")
    assert forced["promoted"] and str(client.get_model_version_by_alias("promo", "champion").version) == v4


def test_a_champion_without_its_score_tag_is_kept_not_read_as_minus_infinity(tmp_path: Path) -> None:
    uri = store(tmp_path)
    Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    client, lock = mlflow.MlflowClient(uri, uri), tmp_path / "promo.lock"
    v1 = _version(client, "bare", "d1")  # e.g. tagged by an older release under another tag name
    client.set_registered_model_alias("bare", "champion", v1)
    v2 = _version(client, "bare", "d1", 0.10)
    decision = registry.promote(client, "bare", v2, "accuracy", 0.10, "d1", lock)
    assert not decision["promoted"] and "has no test_accuracy tag" in decision["reason"]


def test_a_version_at_or_below_the_floor_is_never_promoted(tmp_path: Path) -> None:
    uri = store(tmp_path)
    Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    client, lock = mlflow.MlflowClient(uri, uri), tmp_path / "promo.lock"
    v1 = _version(client, "floor", "d1", 0.143)
    decision = registry.promote(client, "floor", v1, "accuracy", 0.143, "d1", lock, floor=0.466)
    assert not decision["promoted"] and decision["reason"] == "accuracy 0.1430 is not above the floor 0.4660"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("floor", "champion")


def test_the_release_model_takes_part_in_promotion_on_the_same_split(tmp_path: Path) -> None:
    """Issue 39.1: a 4-minute run (51.96 %) into an empty registry became champion over the 69.38 % release."""
    uri = store(tmp_path)
    Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    client, lock = mlflow.MlflowClient(uri, uri), tmp_path / "promo.lock"
    rival = ("release:fer2013-test", 0.6938)

    def promote(version: str, value: float) -> dict:
        return registry.promote(client, "rel", version, "accuracy", value, "d1", lock, release=rival)

    quick = promote(_version(client, "rel", "d1", 0.5196), 0.5196)
    assert not quick["promoted"] and quick["champion"] is None and quick["release_value"] == 0.6938
    assert quick["reason"] == ("accuracy 0.5196 <= the bundled release model's 0.6938 on this test split "
                               "(release:fer2013-test); no champion, so the release model stays the default")
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("rel", "champion")
    assert not promote(_version(client, "rel", "d1", 0.6938), 0.6938)["promoted"]  # a tie keeps the release
    v3 = _version(client, "rel", "d1", 0.712)
    better = promote(v3, 0.712)
    assert better["promoted"]
    assert better["reason"] == "no champion yet; accuracy 0.7120 > the bundled release model's 0.6938"
    v4 = _version(client, "rel", "d1", 0.72)
    assert promote(v4, 0.72)["reason"] == ("accuracy 0.7200 > champion v3 0.7120 and > the bundled release "
                                           "model's 0.6938")
    # a champion set before the release took part, below it: a candidate must still clear the release
    client.set_registered_model_alias("rel", "champion", _version(client, "rel", "d1", 0.50))
    between = promote(_version(client, "rel", "d1", 0.60), 0.60)
    assert not between["promoted"] and "<= the bundled release model's 0.6938" in between["reason"]


def _champion_with(uri: str, tiny_model: Path, tmp_path: Path, tags: dict[str, str]) -> str:
    version = register(uri, tiny_model, tmp_path, "fer-expression-fer2013")
    client = mlflow.MlflowClient(uri, uri)
    for key, value in tags.items():
        client.set_model_version_tag("fer-expression-fer2013", version, key, value)
    return version


@pytest.fixture
def carded_release(release: Path) -> Path:
    """The stand-in release with the figures a real card holds: its accuracy on a test split, and its digest."""
    card = json.loads((release / "model_card.json").read_text())
    card.update(test={"accuracy": 0.6938}, data={"test_digest": "d" * 64})
    (release / "model_card.json").write_text(json.dumps(card))
    return release


def test_the_runner_says_why_the_champion_won_over_the_release(tiny_model, tmp_path: Path, carded_release) -> None:
    uri = store(tmp_path)
    version = _champion_with(uri, tiny_model, tmp_path, {Tag.test_accuracy: "0.712", Tag.test_digest: "e" * 64,
                                                         Tag.release_test_accuracy: "0.6938"})
    resolved = registry.resolve(None, uri, cache_dir=tmp_path / "cache")
    assert resolved.version == version
    assert resolved.why == (f"models:/fer-expression-fer2013@champion v{version} (the champion at {uri}: 71.2 % on "
                            f"test split eeeeeeeeeeee, over the bundled release model's 69.4 %)")


def test_a_champion_promoted_before_the_rule_and_worse_than_the_release_gives_way(
        tiny_model, tmp_path: Path, carded_release) -> None:
    uri = store(tmp_path)
    version = _champion_with(uri, tiny_model, tmp_path, {Tag.test_accuracy: "0.5196", Tag.test_digest: "d" * 64})
    resolved = registry.resolve(None, uri, cache_dir=tmp_path / "cache")
    assert resolved.uri == "release:fer2013-test"
    assert resolved.why == (f"the bundled release model: a stand-in release (the champion "
                            f"models:/fer-expression-fer2013@champion v{version} at {uri} scored 52.0 % on test split "
                            f"dddddddddddd, below the bundled release model's 69.4 % on the same split)")


@pytest.mark.parametrize(("tags", "clause"), [
    ({Tag.test_accuracy: "0.5196", Tag.test_digest: "f" * 64},  # another split: figures are not comparable
     "52.0 % on test split ffffffffffff; not compared with the bundled release model (not scored on the same "
     "test split)"),
    ({Tag.test_accuracy: "0.70", Tag.test_digest: "d" * 64}, "70.0 % on test split dddddddddddd, over the bundled "
     "release model's 69.4 %"),
    ({}, "no recorded test accuracy, so not compared with the bundled release model"),
])
def test_a_champion_without_the_comparison_still_runs_and_says_so(tiny_model, tmp_path: Path, carded_release,
                                                                  tags: dict, clause: str) -> None:
    uri = store(tmp_path)
    version = _champion_with(uri, tiny_model, tmp_path, tags)
    resolved = registry.resolve(None, uri, cache_dir=tmp_path / "cache")
    assert resolved.version == version
    assert resolved.why == f"models:/fer-expression-fer2013@champion v{version} (the champion at {uri}: {clause})"
