"""Training throughput on this machine: images/s of the `fer2013` preset's training step under each speed
lever (precision, oneDNN, XLA, threads, batch size, determinism), and per model.

    .venv/bin/python benchmarks/train_speed.py [--steps 40] [--only "mixed_bfloat16" ...]

Under a time budget, images/s is accuracy: the preset trains for as many epochs as the host allows. Each
measurement runs the real training code path (`pipeline.fitting.make_dataset` with the preset's
augmentation, `compile_for_training`, `model.fit`) on random 48x48 pixels, after one warm-up epoch that pays
for tracing, each in its own process: oneDNN and thread counts are fixed when TensorFlow starts, and op
determinism cannot be switched off again once on. Writes reports/train_speed.json and .md (atomically),
named by the host's CPU, because the figures differ by CPU generation (README, "Training throughput").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRESET = ["experiment=fer2013", "data=synthetic"]  # the FER recipe; data is irrelevant to speed


@dataclass(frozen=True)
class Setting:
    """One lever position: config overrides, environment set before TensorFlow starts, XLA, thread cap."""

    name: str
    overrides: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    jit: bool = False
    threads: int = 0  # 0 = TensorFlow's default (all cores)
    model: str = "fer_vgg"


F32, BF16 = "train.precision=float32", "train.precision=mixed_bfloat16"
ONEDNN_OFF = {"TF_ENABLE_ONEDNN_OPTS": "0"}
SETTINGS = [
    Setting("float32", (F32,)),
    Setting("float32, oneDNN off", (F32,), ONEDNN_OFF),
    Setting("float32, XLA jit_compile", (F32,), jit=True),
    Setting("float32, 1 thread", (F32,), threads=1),
    Setting("float32, batch 256", (F32, "train.batch_size=256")),
    Setting("float32, determinism on", (F32, "train.deterministic=true")),
    Setting("mixed_bfloat16", (BF16,)),
    Setting("mixed_bfloat16, oneDNN off", (BF16,), ONEDNN_OFF),
    Setting("mixed_bfloat16, 1 thread", (BF16,), threads=1),
    Setting("mixed_bfloat16, SAM", (BF16, "train.sam_rho=0.05")),
    Setting("mixed_bfloat16, CutMix", (BF16, "train.augment.cutmix=1.0")),
    Setting("mixed_bfloat16, separable", (BF16, "model.separable=true")),
    Setting("seed_cnn, float32", (F32,), model="seed_cnn"),
    Setting("seed_cnn, mixed_bfloat16", (BF16,), model="seed_cnn"),
    Setting("small_cnn, float32", (F32,), model="small_cnn"),
]


def measure(setting: Setting, steps: int) -> dict[str, object]:
    """In this process: images/s of `fit` over `steps` batches, and of the input pipeline alone."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.config import compose, parse_params
    from pipeline.fitting import compile_for_training, make_dataset, onednn_enabled, sharpness_aware
    from pipeline.inference.contract import CLASSES
    from pipeline.models import build_model, count_macs

    if setting.threads:
        tf.config.threading.set_intra_op_parallelism_threads(setting.threads)
        tf.config.threading.set_inter_op_parallelism_threads(setting.threads)
    params = parse_params(compose([*PRESET, f"model={setting.model}", *setting.overrides]))
    cfg = params.train
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(str(cfg.precision))
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

    net = sharpness_aware(build_model(params.model), cfg.sam_rho)
    compile_for_training(net, cfg, steps)
    net.jit_compile = setting.jit
    net.fit(ds, epochs=1, verbose=0)  # tracing and first-touch costs
    start = time.perf_counter()
    net.fit(ds, epochs=1, verbose=0)
    return {"train_img_s": n / (time.perf_counter() - start), "pipeline_img_s": pipeline_img_s,
            "mmacs": count_macs(net) / 1e6, "params": net.count_params(), "batch_size": cfg.batch_size,
            "onednn": onednn_enabled()}


def write_report(rows: list[dict], steps: int, out: Path) -> None:
    from pipeline.files import write_json, write_text
    from pipeline.timing import machine, machine_name

    info = machine()
    now = datetime.now(UTC)
    write_json(out.with_suffix(".json"), {"measured": now.isoformat(timespec="seconds"), "machine": info,
                                          "steps": steps, "rows": rows})
    base = next((r for r in rows if r["setting"] == "float32"), rows[0])
    ref = base["setting"]
    lines = [
        "# Training throughput",
        "",
        f"Measured {now:%Y-%m-%d %H:%M} UTC by `benchmarks/train_speed.py --steps {steps}`; machine: "
        f"{machine_name(info)}, {info['system']}, Python {info['python']}. The `fer2013` preset's input pipeline, "
        f"optimizer and loss on random pixels, {steps} steps per measurement after a warm-up epoch, each in a fresh "
        f"process; the fer_vgg rows change one lever at a time from {ref} (oneDNN on, all cores, batch 128, "
        "determinism off).",
        "",
        f"| setting | model | M MACs/face | batch | oneDNN ran | train img/s | vs {ref} | input alone img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['train_img_s'] / base['train_img_s']:.2f}x" if r["model"] == base["model"] else ""
        lines.append(f"| {r['setting']} | {r['model']} | {r['mmacs']:.0f} | {r['batch_size']} | "
                     f"{'yes' if r['onednn'] else 'no'} | {r['train_img_s']:.0f} | {ratio} | "
                     f"{r['pipeline_img_s']:.0f} |")
    lines += ["", "One FER2013 epoch is 25,838 training images (90 % of Training): at 500 img/s an epoch takes 52 s, "
              "and the 115-minute budget of the `fer2013` preset holds about 130 epochs. The input pipeline runs on "
              "the same cores as training, so its rate alone must be well above the model's.", ""]
    write_text(out.with_suffix(".md"), "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--only", nargs="+", metavar="SETTING", help="measure these settings (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "train_speed")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    by_name = {s.name: s for s in SETTINGS}
    if args.one:
        import pipeline  # noqa: F401  (before TensorFlow, as in the stages: it turns oneDNN on)

        print(json.dumps(measure(by_name[args.one], args.steps)))
        return
    unknown = set(args.only or ()) - set(by_name)
    if unknown:
        raise SystemExit(f"error: --only: unknown setting(s) {sorted(unknown)}; known: {list(by_name)}")
    rows = []
    for setting in [s for s in SETTINGS if not args.only or s.name in args.only]:
        env = {**os.environ, **setting.env}
        result = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one", setting.name],
                                capture_output=True, text=True, cwd=REPO, env=env)
        if result.returncode != 0:
            raise SystemExit(f"error: setting '{setting.name}': {result.stderr.strip()[-2000:]}")
        row = {"setting": setting.name, "model": setting.model,
               **json.loads(result.stdout.strip().splitlines()[-1])}
        print(f"{setting.name:30s} {row['train_img_s']:6.0f} img/s  (input pipeline alone "
              f"{row['pipeline_img_s']:.0f} img/s)", flush=True)
        rows.append(row)
    write_report(rows, args.steps, args.out)
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
