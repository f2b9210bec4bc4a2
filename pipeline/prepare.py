"""Stage `prepare`: the configured source -> data/prepared/{train,val,test}.npz and report.json.

Reads `data` from params.yaml. `prepare()` reads the source and applies the split rule (tested in-process);
the report says which protocol mapped which FER2013 usage to which split, the counts per class and split,
every skipped file with its reason, and a digest per split that later stages and the registry use to know
which data a model saw.
"""

from __future__ import annotations

import numpy as np

from pipeline import artifacts, cli, record, tracking
from pipeline.config import DataConfig, load_params
from pipeline.data import DataError, read_source
from pipeline.files import sha256_arrays
from pipeline.inference.contract import CLASSES
from pipeline.splits import PreparedReport, save_split, write_report

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


def prepare(cfg: DataConfig) -> tuple[Arrays, PreparedReport]:
    """The three splits and their report; DataError (one line naming the file) for unusable input."""
    splits, collected = read_source(cfg)
    counts = {name: {c: int((y == i).sum()) for i, c in enumerate(CLASSES)} | {"total": len(y)}
              for name, (_, y) in splits.arrays.items()}
    report = PreparedReport(
        source=str(cfg.source), path=cfg.path, protocol=splits.protocol, mapping=splits.mapping,
        classes=list(CLASSES), counts=counts,
        digests={name: sha256_arrays(x, y) for name, (x, y) in splits.arrays.items()},
        skipped={"count": len(collected.skipped), "files": collected.skipped},
        warnings=[f"empty class folder: {c}" for c in collected.empty_classes]
        + [f"{name}: no '{c}' faces" for name, n in counts.items() for c in CLASSES if n[c] == 0],
    )
    return splits.arrays, report


def main() -> None:
    params = load_params()
    try:
        arrays, report = prepare(params.data)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"[prepare] {report.source} ({report.path}), protocol {report.protocol}: "
          + "; ".join(f"{s} <- {report.mapping[s]} ({report.total(s)})" for s in artifacts.SPLITS))
    for warning in report.warnings:
        print(f"[prepare] warning: {warning}")
    if report.skipped["count"]:
        print(f"[prepare] skipped {report.skipped['count']} unreadable file(s), listed in {artifacts.PREPARED_REPORT}")
    with tracking.stage_run("prepare", params):
        for name in artifacts.SPLITS:
            save_split(artifacts.split_path(name), *arrays[name])
        write_report(report)
        record.log_prepared(report)


if __name__ == "__main__":
    cli.run(main, __doc__, "prepare")
