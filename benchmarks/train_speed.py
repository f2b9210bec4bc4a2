"""Training throughput on this machine: images/s per model, with op determinism off and on, and the input
pipeline alone (so a reader sees whether augmentation starves the model).

    .venv/bin/python benchmarks/train_speed.py [--steps 30] [--models fer_vgg seed_cnn ...]

Each measurement runs the real training code path (`pipeline.training.make_dataset` with the `fer2013` preset's
augmentation, `model.fit` with its optimizer and loss) on random 48x48 pixels, after one warm-up epoch
that pays for tracing; each configuration in its own process, because TF op determinism cannot be
switched off again once on. Writes reports/train_speed.json and reports/train_speed.md (atomically).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRESET = ["experiment=fer2013", "data=synthetic"]  # the FER recipe; data is irrelevant to speed


def measure(model: str, deterministic: bool, steps: int) -> dict[str, float]:
    """In this process: images/s of `fit` over `steps` batches, and of the input pipeline alone."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.config import compose, parse_params
    from pipeline.inference.contract import CLASSES
    from pipeline.models import build_model, count_macs
    from pipeline.training import compile_for_training, make_dataset

    params = parse_params(compose([*PRESET, f"model={model}", f"train.deterministic={str(deterministic).lower()}"]))
    cfg = params.train
    keras.utils.set_random_seed(cfg.seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    n = steps * cfg.batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    y = rng.integers(0, len(CLASSES), n)
    ds = make_dataset(x, y, cfg, training=True)

    for _ in ds:  # warm the cache and trace the augmentation
        pass
    start = time.perf_counter()
    for _ in ds:
        pass
    pipeline_img_s = n / (time.perf_counter() - start)

    net = build_model(params.model)
    compile_for_training(net, cfg, steps)
    net.fit(ds, epochs=1, verbose=0)  # tracing and first-touch costs
    start = time.perf_counter()
    net.fit(ds, epochs=1, verbose=0)
    return {"train_img_s": n / (time.perf_counter() - start), "pipeline_img_s": pipeline_img_s,
            "mmacs": count_macs(net) / 1e6, "params": net.count_params(), "batch_size": cfg.batch_size}


def write_report(rows: list[dict], steps: int, out: Path) -> None:
    from pipeline.files import write_json, write_text
    from pipeline.timing import machine

    info = machine()
    write_json(out.with_suffix(".json"), {"measured": datetime.now(UTC).isoformat(timespec="seconds"),
                                          "machine": info, "steps": steps, "rows": rows})
    lines = [
        "# Training throughput",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/train_speed.py`; machine: {info['cpu']}, "
        f"{info['cores']} cores, {info['system']}, Python {info['python']}. The `fer2013` preset's input pipeline "
        f"and optimizer on random pixels, {steps} steps per measurement after a warm-up epoch, batch "
        f"{rows[0]['batch_size']}.",
        "",
        "| model | M MACs/face | params | train img/s, determinism off | on | cost of determinism | "
        "input pipeline alone img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):  # main() measures every model both ways
        off, on = (next(r for r in rows if r["model"] == model and r["deterministic"] is d) for d in (False, True))
        cost = f"{1 - on['train_img_s'] / off['train_img_s']:.0%} slower"
        lines.append(f"| {model} | {off['mmacs']:.0f} | {off['params']:,} | {off['train_img_s']:.0f} | "
                     f"{on['train_img_s']:.0f} | {cost} | {off['pipeline_img_s']:.0f} |")
    lines += ["", "One FER2013 epoch is 25,838 training images (90 % of Training). The input pipeline runs on the "
              "same two cores as training, so its rate alone must be well above the model's.", ""]
    write_text(out.with_suffix(".md"), "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=["fer_vgg", "seed_cnn", "small_cnn"])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "train_speed")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "DETERMINISTIC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1] == "true", args.steps)))
        return
    rows = []
    for model in args.models:
        for deterministic in (False, True):
            result = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one", model,
                                     str(deterministic).lower()], capture_output=True, text=True, cwd=REPO)
            if result.returncode != 0:
                raise SystemExit(f"error: {model} deterministic={deterministic}: {result.stderr.strip()[-2000:]}")
            row = {"model": model, "deterministic": deterministic, **json.loads(result.stdout.strip().splitlines()[-1])}
            print(f"{model:10s} determinism {'on ' if deterministic else 'off'}  {row['train_img_s']:6.0f} img/s  "
                  f"(input pipeline alone {row['pipeline_img_s']:.0f} img/s)", flush=True)
            rows.append(row)
    write_report(rows, args.steps, args.out)
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
