"""Stage `prepare`: the configured source -> data/prepared/{train,val,test}.npz and report.json.

Reads `data` from params.yaml. The report says which protocol mapped which FER2013 usage to which split,
the counts per class and split, every skipped file with its reason, and a digest per split that later
stages and the registry use to know which data a model saw.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from pipeline import tracking
from pipeline.config import CLASSES, load_params
from pipeline.data import DataError, read_source
from pipeline.files import save_split, sha256_arrays, write_json

OUT_DIR = Path("data/prepared")
SPLITS = ("train", "val", "test")


def main() -> None:
    params = load_params()
    cfg = params.data
    try:
        splits, collected = read_source(cfg)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None

    counts = {name: {c: int((y == i).sum()) for i, c in enumerate(CLASSES)} | {"total": len(y)}
              for name, (_, y) in splits.arrays.items()}
    report = {
        "source": str(cfg.source), "path": cfg.path, "protocol": splits.protocol, "mapping": splits.mapping,
        "classes": list(CLASSES), "counts": counts,
        "digests": {name: sha256_arrays(x, y) for name, (x, y) in splits.arrays.items()},
        "skipped": {"count": len(collected.skipped), "files": collected.skipped},
        "warnings": [f"empty class folder: {c}" for c in collected.empty_classes]
                    + [f"{name}: no '{c}' faces" for name, n in counts.items() for c in CLASSES if n[c] == 0],
    }
    print(f"[prepare] {cfg.source} ({cfg.path}), protocol {splits.protocol}: "
          + "; ".join(f"{s} <- {splits.mapping[s]} ({counts[s]['total']})" for s in SPLITS))
    for warning in report["warnings"]:
        print(f"[prepare] warning: {warning}")
    if collected.skipped:
        print(f"[prepare] skipped {len(collected.skipped)} unreadable file(s), listed in {OUT_DIR}/report.json")

    with tracking.stage_run("prepare", params, upstream=None):
        for name in SPLITS:
            save_split(OUT_DIR / f"{name}.npz", *splits.arrays[name])
        write_json(OUT_DIR / "report.json", report)
        log_datasets(report)
        mlflow.log_dict(report, "prepare/report.json")


def log_datasets(report: dict) -> None:
    """Record the splits with MLflow dataset tracking (digest, source, size), so runs say what data they saw."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    for name in SPLITS:
        dataset = MetaDataset(source=LocalArtifactDatasetSource(str(OUT_DIR / f"{name}.npz")),
                              name=f"{report['source']}-{name}", digest=report["digests"][name][:36])
        tracking.log_input(dataset, context=name, tags={"rows": str(report["counts"][name]["total"]),
                                                        "protocol": report["protocol"], "path": report["path"]})
    mlflow.log_metrics({f"data_{name}_size": report["counts"][name]["total"] for name in SPLITS})


if __name__ == "__main__":
    main()
