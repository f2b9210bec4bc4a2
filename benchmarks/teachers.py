"""The distillation teachers on val, each and averaged: which ensemble a student should learn from.

    .venv/bin/python benchmarks/teachers.py --split data/prepared/val.npz [--out reports/teachers-val] [URI ...]

Without URIs: every committed teacher (models/teachers/) and the bundled release model, the names that
`train.distill.teachers` takes. Each is scored as it ships (the int8 file, its test-time views inside) on a
FER2013 val split that none of them trained on (prepare FER2013 with the default split rule; the cards' val
figures come from the same split). Writes `<out>.md` and `<out>.json`: each teacher's accuracy, the average
of all of them, and the best average of each size over every subset: the figure a student distilled from
them can at best approach, measured before the student's two hours are spent. Numbers only: no image.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import artifacts  # noqa: E402
from pipeline.files import sha256_arrays, write_json, write_text  # noqa: E402
from pipeline.inference.classifier import ModelError, TFLiteClassifier  # noqa: E402
from pipeline.inference.registry import RELEASE_DIR, release_card, teacher  # noqa: E402
from pipeline.splits import load_split  # noqa: E402
from pipeline.timing import machine, machine_name  # noqa: E402


def shipped_teachers(folder: Path) -> list[str]:
    """Every committed teacher, then the bundled release model (by the name its card pins)."""
    names = [f"teacher:{p.parent.name}" for p in sorted(folder.glob("*/model.tflite"))]
    release = release_card().get("release")  # e.g. fer-expression-fer2013-87c95f0d
    return [*names, f"release:{release}"] if release and (RELEASE_DIR / "model.tflite").is_file() else names


def score(uris: list[str], x: np.ndarray, folder: Path, tracking_uri: str) -> dict[str, np.ndarray]:
    """Each teacher's scores [N, 7] on the faces, one thread (the figures are accuracies, not speeds)."""
    scores = {}
    for uri in uris:
        try:
            model = teacher(uri, tracking_uri, folder)
        except ModelError as e:
            raise SystemExit(f"error: {e}") from None
        scores[uri] = TFLiteClassifier(model.tflite, model.labels).predict(x)
        print(f"{uri}: scored {len(x)} faces", file=sys.stderr)
    return scores


def ensembles(scores: dict[str, np.ndarray], y: np.ndarray) -> list[dict]:
    """The accuracy of the averaged scores of every subset of two or more teachers: by size, the best first."""
    names, rows = list(scores), []
    for size in range(2, len(names) + 1):
        for subset in itertools.combinations(names, size):
            accuracy = float((np.mean([scores[n] for n in subset], axis=0).argmax(1) == y).mean())
            rows.append({"teachers": list(subset), "accuracy": accuracy})
    return sorted(rows, key=lambda r: (len(r["teachers"]), -r["accuracy"]))


def report(scores: dict[str, np.ndarray], y: np.ndarray, split: Path, digest: str) -> tuple[dict, str]:
    """The figures (JSON) and the table (Markdown); the split named without a local folder, by its digest."""
    single = {n: float((s.argmax(1) == y).mean()) for n, s in scores.items()}
    subsets = ensembles(scores, y)
    best = {size: max((r for r in subsets if len(r["teachers"]) == size), key=lambda r: r["accuracy"])
            for size in range(2, len(scores) + 1)}
    host = machine_name(machine())
    split = split if not split.is_absolute() else Path(split.name)  # no local paths in a committed report
    payload = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "host": host, "split": str(split),
               "split_sha256": digest, "faces": len(y), "teachers": single,
               "best_by_size": {str(k): v for k, v in best.items()}, "subsets": subsets}
    lines = ["# The distillation teachers on val", "",
             f"Generated {payload['date']} by `benchmarks/teachers.py` on {host}, from `{split}` ({len(y)} faces, "
             f"arrays sha256 {digest[:12]}). Each teacher as it ships: int8, its test-time views inside. An "
             "ensemble averages its teachers' scores, as `train.distill.teachers` does.", "",
             "| teacher | val accuracy |", "|---|---|",
             *[f"| `{n}` | {a:.2%} |" for n, a in sorted(single.items(), key=lambda kv: -kv[1])], "",
             "| teachers averaged | best subset | val accuracy |", "|---|---|---|",
             *[f"| {size} | {', '.join(f'`{t}`' for t in r['teachers'])} | {r['accuracy']:.2%} |"
               for size, r in best.items()], ""]
    return payload, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teachers", nargs="*", help="teacher:<folder>, release:<name> or models:/ URIs")
    parser.add_argument("--split", type=Path, default=Path("data/prepared/val.npz"))
    parser.add_argument("--teachers-dir", type=Path, default=artifacts.TEACHERS_DIR)
    parser.add_argument("--out", type=Path, default=Path("reports/teachers-val"))
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                        help="for models:/ URIs")
    args = parser.parse_args()
    uris = args.teachers or shipped_teachers(args.teachers_dir)
    if len(uris) < 2:
        raise SystemExit(f"error: {len(uris)} teacher(s) ({', '.join(uris) or 'none'}): an ensemble needs two")
    x, y = load_split(args.split)
    payload, text = report(score(uris, x, args.teachers_dir, args.tracking_uri), y, args.split, sha256_arrays(x, y))
    write_json(args.out.with_suffix(".json"), payload)
    write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
