"""`python -m pipeline.release models:/fer-expression-fer2013@champion` (`make release-model MODEL=...`): the release
model that ships inside the package, written from the registry.

Writes `pipeline/inference/release/`: the registered int8 .tflite (its sha256 checked against the version's tag),
its labels.json, and a model card as Markdown and JSON: the data and its terms of use, the split rule, the
preset and the command that rebuilds the model, the commit, PublicTest accuracy, macro-F1 and per-class recall,
latency per face on the machine that measured it, size, sha256, and the lineage command's output. Releasing a
better champion later is the same one command; every file is replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.artifacts import TEACHERS_DIR
from pipeline.files import write_json, write_text
from pipeline.inference.classifier import ModelError, TFLiteClassifier, read_labels_file
from pipeline.inference.contract import CLASSES, LABELS_FILE, MODEL_FILE, Tag, default_tracking_uri, parse_model_uri
from pipeline.inference.registry import RELEASE_DIR, download_registered, sha256_of
from pipeline.record import fitted_on_val
from pipeline.timing import machine_name

TERMS = ("FER2013 (Goodfellow et al., 'Challenges in Representation Learning: A report on three machine "
         "learning contests', ICML 2013 workshop, arXiv:1307.0414), distributed by Kaggle under the rules of the "
         "'Challenges in Representation Learning: Facial Expression Recognition Challenge' competition. The faces "
         "were collected by web image search; their copyright stays with their owners and the dataset's "
         "publishers grant no licence for commercial use. This model is provided for research and evaluation; "
         "check the dataset's terms before any other use.")


def _run_artifact(client: Any, run_id: str, path: str) -> dict:
    """A JSON artifact of the run (evaluate/evaluate.json, benchmark/benchmark.json), {} when absent."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
        except Exception:  # an older run without it: the card says what it has
            return {}


def card(uri: str, tracking_uri: str) -> tuple[dict, str]:
    """The model card as a dict, and the lineage text (from `pipeline.lineage`)."""
    import mlflow

    from pipeline import lineage

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    info = lineage.describe(uri)
    version = client.get_model_version(info["name"], info["version"])
    run_id = version.tags.get(Tag.run_id) or info["run_id"]
    evaluate = (_run_artifact(client, run_id, "evaluate/details.json")  # older runs: evaluate.json
                or _run_artifact(client, run_id, "evaluate/evaluate.json"))
    bench = (_run_artifact(client, run_id, "benchmark/details.json")
             or _run_artifact(client, run_id, "benchmark/benchmark.json"))
    variant = version.tags.get(Tag.variant, "int8")
    scores = evaluate.get("models", {}).get(variant, {})
    path = info["data"]["path"] or ""

    def local(text: str) -> str:  # the data's path on the machine that trained it means nothing elsewhere
        return text.replace(path, "<your FER2013 zip>") if path else text

    run = client.get_run(run_id)
    return {
        # a version number is only unique within one registry; the training run's id is unique everywhere
        "release": f"{info['name']}-{run_id[:8]}", "family": "fer2013", "model": uri,
        "registered": {"name": info["name"], "version": info["version"], "run_id": run_id},
        "summary": f"{info['name']} v{info['version']} (run {run_id[:8]}), "
                   f"{float(version.tags.get(Tag.test_accuracy, 'nan')):.2%} on FER2013 PublicTest",
        "data": _data_section(info, run.data.params, evaluate, path),
        "training": {"commit": info["commit"], "dirty": info["dirty"], "dvc_exp_name": info["dvc_exp_name"],
                     "rebuild": local(info["rebuild"]["command"]),
                     "overrides": [local(o) for o in info["rebuild"]["overrides"]]},
        "variant": variant, "views": _views(run.data.params),
        # what was chosen on: one view at the epoch kept, and the export with its views (absent after a final fit)
        "val": {"accuracy_one_view": run.data.metrics.get("val/accuracy"),
                "exported_accuracy": run.data.metrics.get("val/exported_accuracy")},
        "test": {"accuracy": float(version.tags.get(Tag.test_accuracy, "nan")),
                 "macro_f1": float(version.tags.get(Tag.test_macro_f1, "nan")),
                 "recall": {c: scores["per_class"][c]["recall"] for c in CLASSES} if scores else {},
                 "faces": evaluate.get("test_size")},
        "latency": {"ms_per_face_1_thread": (bench.get("latency", {}).get(f"{variant}_t1") or {}).get("median_ms"),
                    "machine": machine_name(bench.get("machine", {})), "macs_per_face": bench.get("macs_per_face")},
    }, local(lineage.render(info))


def _views(params: dict[str, str]) -> dict:
    """The test-time views in the graph (older runs logged them under model.tta_*)."""
    return {"flip": params.get("quantize.views.flip", params.get("model.tta_flip")) == "true",
            "zoom": int(params.get("quantize.views.zoom", params.get("model.tta_zoom", 0)))}


def _data_section(info: dict, params: dict[str, str], evaluate: dict, path: str) -> dict:
    return {"source": info["data"]["source"], "file": Path(path).name, "md5": info["data"]["md5"],
            "protocol": params.get("data.protocol") if evaluate.get("protocol") is None else evaluate["protocol"],
            "splits": {d["context"]: int(d["rows"]) for d in info["data"]["datasets"]},
            "test_split": evaluate.get("test_split", "PublicTest"),
            # a final fit (train.include_val) learned from val too, after the recipe was chosen on it
            "fitted_on": ["train", "val"] if fitted_on_val(params) else ["train"],
            "train_digest": info["data"]["train_digest"], "test_digest": info["data"]["test_digest"],
            "terms": TERMS}


def data_text(d: dict) -> str:
    """Which faces the model learned from, and which split chose what: a final fit learned from val as well."""
    splits = d["splits"]
    fitted = d.get("fitted_on", ["train"])
    faces = sum(splits.get(s, 0) for s in fitted)
    fit = (f"The model was fitted on {' + '.join(fitted)} ({faces:,} faces): its recipe had been chosen on "
           "validation (a seeded, stratified 10 % of Training) in earlier runs, so this final fit has no held-out "
           "validation figure." if "val" in fitted else
           "Validation (a seeded, stratified 10 % of Training) is the only split anything was chosen on.")
    return (f"Trained on FER2013 Training (`{d['file']}`, md5 `{d['md5']}`), split by the `{d['protocol']}`\n"
            f"protocol: {', '.join(f'{k} {v:,} faces' for k, v in splits.items())}; the test split is\n"
            f"{d['test_split']}, read once, after training. {fit}")


ROLES = {
    "release": "The release model bundled with `fer-pipeline` (`pipeline/inference/release/`): the runner and the "
               "Python API\nuse it when no `model=` is given and the tracking store has no better FER2013 champion.",
    "teacher": "A distillation teacher (`models/teachers/`): this pipeline trained it on FER2013 Training, and a "
               "student\nlearns from its scores with `train.distill.teachers=[teacher:<name>]`. It does not ship.",
}


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _table(c: dict) -> str:
    """The card's facts: what goes in and out, how big and fast, how good on val and PublicTest."""
    views = ["the face"] + ([f"its central {c['views']['zoom']} px zoomed"] if c["views"]["zoom"] else [])
    views_text = " and ".join(views) + (", and the mirror of each" if c["views"]["flip"] else "")
    latency, test, val = c["latency"], c["test"], c.get("val", {})
    mmacs = latency["macs_per_face"] / 1e6 if latency["macs_per_face"] else float("nan")
    ms = latency["ms_per_face_1_thread"] or float("nan")
    return f"""| | |
|---|---|
| input | raw gray pixels, uint8 [1, 48, 48, 1] (scale 1, zero point 0); normalisation is in the graph |
| output | 7 scores: {', '.join(CLASSES)} |
| variant | {c['variant']} TFLite, {c['size_bytes'] / 1024:,.0f} KiB, sha256 `{c['sha256']}` |
| test-time views | {views_text} ({mmacs:.0f} M MACs per face) |
| validation, one view / export | {_percent(val.get('accuracy_one_view'))} / {_percent(val.get('exported_accuracy'))} |
| FER2013 PublicTest ({test['faces']} faces) | accuracy **{test['accuracy']:.2%}**, macro-F1 {test['macro_f1']:.3f} |
| latency per face, 1 thread | {ms:.2f} ms on {latency['machine']} (LiteRT; hosts differ, see the README) |
| registered as | `models:/{c['registered']['name']}/{c['registered']['version']}`, run `{c['registered']['run_id']}` |
| commit | `{c['training']['commit']}`{' (dirty)' if c['training']['dirty'] else ''} |"""


def markdown(c: dict, lineage_text: str) -> str:
    recall = " | ".join(f"{v:.0%}" for v in c["test"]["recall"].values())
    return f"""# Model card: {c['release']}

{ROLES[c.get('role', 'release')]} {c['summary']}.

{_table(c)}

Per-class recall on PublicTest:

| {' | '.join(CLASSES)} |
|{'---|' * len(CLASSES)}
| {recall} |

## Data and terms of use

{data_text(c['data'])}

{c['data']['terms']}

Limits: FER2013 faces are small, frontal-ish web photos labelled by crowd workers; its labels disagree with
each other for a sizeable share of faces, `disgust` is rare (1.5 % of Training), and the people in it are not
a balanced sample of anyone. Do not use its output to make decisions about people.

## How it was made

```
{c['training']['rebuild']}
```

`python -m pipeline.lineage {c['model']}` printed, at release:

```
{lineage_text}
```
"""


def release(uri: str, tracking_uri: str, out: Path = RELEASE_DIR, role: str = "release") -> dict:
    """Download, check and write the release (or a teacher's) files; the card dict."""
    parse_model_uri(uri)
    model = download_registered(uri, tracking_uri)
    meta = read_labels_file(model.tflite.with_name(LABELS_FILE))
    TFLiteClassifier(model.tflite, list(meta["labels"]))  # loads, and has the contract's shapes
    c, lineage_text = card(uri, tracking_uri)
    c.update(sha256=sha256_of(model.tflite), size_bytes=model.tflite.stat().st_size, role=role)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-{MODEL_FILE}"
    shutil.copy(model.tflite, tmp)
    if sha256_of(tmp) != c["sha256"]:
        tmp.unlink()
        raise ModelError(f"{uri}: the copy's sha256 differs from the download's; nothing was released")
    tmp.replace(out / MODEL_FILE)
    write_json(out / LABELS_FILE, {"labels": list(meta["labels"]), "trained_on": "fer2013", "views": c["views"],
                                   "macs_per_face": c["latency"]["macs_per_face"]})
    write_json(out / "model_card.json", c)
    write_text(out / "MODEL_CARD.md", markdown(c, lineage_text))
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="models:/<name>@<alias> or models:/<name>/<version> (a FER2013 model)")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    parser.add_argument("--teacher", action="store_true",
                        help=f"write a distillation teacher to {TEACHERS_DIR}/<release name>/ instead")
    args = parser.parse_args()
    if "fer2013" not in args.model:
        raise SystemExit(f"error: {args.model}: the release is a FER2013 model (models:/fer-expression-fer2013...)")
    try:
        if args.teacher:  # the folder is named after the card's unique release name, known only once it is made
            with tempfile.TemporaryDirectory(dir=TEACHERS_DIR.parent) as tmp:
                c = release(args.model, args.tracking_uri or default_tracking_uri(), Path(tmp), role="teacher")
                out = TEACHERS_DIR / c["release"]
                if out.exists():
                    raise SystemExit(f"error: {out} exists already: that run is a teacher already")
                TEACHERS_DIR.mkdir(parents=True, exist_ok=True)
                Path(tmp).chmod(0o755)  # a temporary folder is private (0700); a committed one is not
                Path(tmp).rename(out)
        else:
            c, out = release(args.model, args.tracking_uri or default_tracking_uri()), RELEASE_DIR
    except (ModelError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    name = f"teacher:{c['release']}" if args.teacher else c["release"]
    print(f"released {name} ({c['test']['accuracy']:.2%} on PublicTest, sha256 {c['sha256'][:12]}) to {out}")


if __name__ == "__main__":
    main()
