"""`python -m pipeline.search [PRESET] [key=value ...]`: what `make search` calls (see the package's doc)."""

from __future__ import annotations

import signal
import sys

from pipeline import cli, search
from pipeline.search.loop import run_search
from pipeline.search.preset import SearchError, load_search


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    presets = [a for a in argv if "=" not in a]
    if len(presets) > 1:
        raise SearchError(f"error: one preset at most, got {' '.join(presets)} (overrides are key=value)")
    return (presets[0] if presets else "default"), [a for a in argv if "=" in a]


def main() -> None:
    preset, overrides = parse_args(sys.argv[1:])
    cfg = load_search(preset, overrides)
    previous = signal.signal(signal.SIGTERM, cli.raise_interrupt)
    try:
        run_search(cfg)
    except KeyboardInterrupt:
        print(f"[search] interrupted: the running trial is marked failed and does not count; "
              f"`python -m pipeline.search {' '.join(sys.argv[1:])}` continues the study", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    cli.run(main, search.__doc__, "search")
