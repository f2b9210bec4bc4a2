"""Writing outputs so that a crash never leaves a half-written file that DVC could cache.

Every stage output goes through `atomic_path`: the data lands in a temporary sibling (same directory, so
the final `os.replace` is an atomic rename on the same filesystem) and only a complete file takes the
real name. An interrupted stage leaves at most a `.tmp-*` file, which the next run overwrites.
`read_run_record` reads back `runs/<stage>.json`, the record tracking, the search and evaluate share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import artifacts

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically; floats keep their full precision (`json` writes repr)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_run_record(stage: str) -> dict[str, Any]:
    """`runs/<stage>.json`: the MLflow run `stage` logged into (`run_id`, `experiment_id`, `tracking_uri`).

    OSError when there is none, ValueError when it is not a JSON object (an edited or truncated file): callers
    take either, and a missing key (KeyError), as "no run recorded" rather than crash on the type.
    """
    record = json.loads(artifacts.run_record(stage).read_text())
    if not isinstance(record, dict):
        raise ValueError(f"{artifacts.run_record(stage)}: not a JSON object")
    return record


def sha256_arrays(*arrays: np.ndarray) -> str:
    """A digest of array contents (not of the file bytes), so it names the data whatever the container."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(str((a.dtype.str, a.shape)).encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()
