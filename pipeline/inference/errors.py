"""An error as the user sees it: one line, never a traceback.

Standard library only, so the pipeline and the runner share it without the runner importing the pipeline.
"""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of `e`'s message, else its type's name: libraries' messages run over many lines (Hydra's
    and MLflow's quote whole configs or responses), and one that is empty would leave a bare `error: `."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
