"""Writing outputs so that a crash never leaves a half-written file that DVC could cache.

Every stage output goes through `atomic_path`: the data lands in a temporary sibling (same directory, so
the final `os.replace` is an atomic rename on the same filesystem) and only a complete file takes the
real name. An interrupted stage leaves at most a `.tmp-<name>-pid<pid>@<host>-*` file; the next write into
that folder removes every such file whose process is gone (this host's only), so a SIGKILL leaves nothing
behind for `git status` to show.
`read_run_record` reads back `runs/<stage>.json`, the record tracking, the search and evaluate share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import artifacts

_UMASK = os.umask(0)
os.umask(_UMASK)


# `.tmp-<stem>-pid<pid>@<host>-<mkstemp's 8 characters><suffix>`: the writer's process and host are in the name
_TEMPORARY = re.compile(r"^\.tmp-.*-pid(?P<pid>\d+)@(?P<host>[^/@]+)-[a-z0-9_]{8}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries that `atomic_path` left in `folder` when its process was killed (SIGKILL, power
    loss): only files of our own naming, made on this host by a process that no longer exists. Others' files
    and a live writer's temporary are never touched. Returns what was removed."""
    removed: list[Path] = []
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            match = _TEMPORARY.match(entry.name)
            if not match or match["host"] != host or _pid_alive(int(match["pid"])) or not entry.is_file():
                continue
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary ends in `suffix` (default: `path`'s own), for writers that insist on a name's ending, such
    as Keras' `.weights.h5`. Temporaries left in the same folder by killed writers are removed first
    (`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-pid{os.getpid()}@{socket.gethostname()}-",
                               suffix=path.suffix if suffix is None else suffix, dir=path.parent)
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
