"""Which test-time views pay, judged on the validation split only: accuracy of a trained model's core for
each set of views, so that `quantize.views.flip` / `quantize.views.zoom` are chosen by measurement, not by test.

    .venv/bin/python benchmarks/tta_views.py [--repo DIR] [--label NAME] [--out reports/tta_views.md]

Reads `DIR/models/model.keras` (the trained core, unwrapped from its TTA if it has one) and
`DIR/data/prepared/val.npz`; never the test split. The views are the ones the exported model can build
(face, mirror, central crop scaled back to 48x48) plus shifted copies for comparison. Writes a Markdown
table (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def views(x: np.ndarray) -> dict[str, np.ndarray]:
    """Every single view of the batch `x` [N,48,48,1] (float pixels), by name."""
    from pipeline.models import CenterZoom

    out = {"face": x, "mirror": x[:, :, ::-1]}
    for crop in (44, 40):
        zoomed = np.asarray(CenterZoom(crop)(x))
        out[f"zoom{crop}"], out[f"zoom{crop}-mirror"] = zoomed, zoomed[:, :, ::-1]
    padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
    for dx, dy in ((3, 0), (-3, 0), (0, 3), (0, -3)):
        shifted = padded[:, 3 + dy:51 + dy, 3 + dx:51 + dx]
        out[f"shift{dx:+d}{dy:+d}"], out[f"shift{dx:+d}{dy:+d}-mirror"] = shifted, shifted[:, :, ::-1]
    return out


def unwrap_views(model: keras.Model) -> keras.Model:
    """The network inside `model` if it was saved wrapped in its test-time views (older runs did),
    else `model` itself: an ensemble (`train.members`) also nests networks, its members, and is
    scored whole."""
    import keras

    if not any(layer.name == "tta_mean" for layer in model.layers):
        return model
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


SETS = {
    "face (no TTA)": ["face"],
    "face + mirror (tta_flip)": ["face", "mirror"],
    "+ zoom 44 + its mirror (tta_flip, tta_zoom 44)": ["face", "mirror", "zoom44", "zoom44-mirror"],
    "+ zoom 40 + its mirror (tta_flip, tta_zoom 40)": ["face", "mirror", "zoom40", "zoom40-mirror"],
    "face + mirror + 4 shifts of 3 px + their mirrors (10 views)": [
        "face", "mirror", *[f"shift{s}{m}" for s in ("+3+0", "-3+0", "+0+3", "+0-3") for m in ("", "-mirror")]],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--label", help="what the model is, for the report (default: its path)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "tta_views.md")
    args = parser.parse_args()
    import keras

    from pipeline import models  # noqa: F401  (registers the TTA layers, so a TTA-wrapped model loads)
    from pipeline.files import write_text
    from pipeline.splits import load_split

    model_path, val_path = args.repo / "models" / "model.keras", args.repo / "data" / "prepared" / "val.npz"
    for path in (model_path, val_path):
        if not path.exists():
            raise SystemExit(f"error: {path} not found (run the pipeline in {args.repo} first)")
    model = keras.models.load_model(model_path)
    core = unwrap_views(model)
    x, y = load_split(val_path)
    scores = {name: core.predict(v, batch_size=512, verbose=0)
              for name, v in views(x[..., None].astype(np.float32)).items()}
    lines = ["# Test-time views on the validation split", "",
             f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/tta_views.py` on "
             f"{args.label or f'`{model_path}`'} "
             f"({len(y)} validation faces; the test split is not read). Each view costs one pass of the core "
             "model, so the views multiply the MACs and the latency per face.", "",
             "| views | passes | val accuracy |", "|---|---|---|"]
    for label, names in SETS.items():
        accuracy = float((np.mean([scores[n] for n in names], axis=0).argmax(axis=1) == y).mean())
        lines.append(f"| {label} | {len(names)} | {accuracy:.2%} |")
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
