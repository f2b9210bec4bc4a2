"""Does the seed project's CNN learn under a recipe? A short probe before a 2-hour budgeted run.

    .venv/bin/python benchmarks/seed_probe.py --prepared <dir with train.npz, val.npz> [--images 8000]
        [--epochs 3] [Hydra overrides on top of experiment=fer2013_seed ...]

Trains `seed_cnn` through the pipeline's own pieces (tf.data input, batch-level augmentation, optimizer, class
weights, label smoothing) at a constant learning rate on a seeded subset of the prepared training split, and
prints the validation accuracy after each epoch. A network stuck on the majority class shows the share of
`happy` in validation (25.2 % on FER2013) every epoch. Prints numbers only; writes nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import numpy as np

from pipeline.config import compose, parse_params
from pipeline.fitting import class_weights, compile_for_training, make_dataset
from pipeline.models import build_model
from pipeline.splits import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    params = parse_params(compose(["experiment=fer2013_seed", "train.schedule=constant", "train.time_budget_min=0",
                                   *args.overrides]))
    cfg = params.train
    x, y = load_split(args.prepared / "train.npz")
    x_val, y_val = load_split(args.prepared / "val.npz")
    subset = np.random.default_rng(cfg.seed).permutation(len(x))[:args.images]
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(params.model)
    steps = -(-len(subset) // cfg.batch_size)
    compile_for_training(model, cfg, steps)
    start = time.monotonic()
    history = model.fit(make_dataset(x[subset], y[subset], cfg, training=True), epochs=args.epochs, verbose=0,
                        class_weight=class_weights(y[subset], cfg.class_weight),
                        validation_data=make_dataset(x_val, y_val, cfg, training=False)).history
    majority = np.bincount(y_val).max() / len(y_val)
    print(f"{' '.join(args.overrides) or '(the fer2013_seed preset)'}: val accuracy per epoch "
          f"{[round(v, 3) for v in history['val_accuracy']]} (majority class {majority:.3f}), "
          f"train loss {history['loss'][-1]:.3f}, {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
