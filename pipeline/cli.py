"""The entry point every stage module shares: `--help` prints what the stage does instead of running it, and
Ctrl-C (or SIGTERM) ends it with one line instead of a traceback. Outputs are written atomically, so an
interrupted stage leaves the previous ones untouched and `dvc repro` simply runs it again."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run(main: Callable[[], None], doc: str | None, stage: str) -> None:
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(f"python -m pipeline.{stage}: {(doc or '').strip()}")
        return
    try:
        main()
    except KeyboardInterrupt:
        print(f"[{stage}] interrupted: nothing half-written was kept; `dvc repro` runs it again", file=sys.stderr)
        raise SystemExit(130) from None
