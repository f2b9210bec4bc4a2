"""Does the runner's crop frame a face the way FER2013 does? Faces found and labels right in a video of FER2013
faces, beside the same model on the original 48x48 crops.

    python benchmarks/framing.py --data <the FER2013 zip> [--split test|val] [--faces 600] [--margin 0.1 ...]

Makes a 640x480 video in which FER2013 faces (from the chosen split of the prepared data, `holdout` protocol)
are pasted, 80-300 px wide (`--sizes`), on textured backgrounds and drift across the frame, one face per
`--frames-per-face` frames; runs the runner on it (BlazeFace, with and without its tiles, `--confident` the score
that ends its search, the model by the
resolution rule or `--model`, smoothing off so no face inherits the previous one's scores) and reports the
share of frames whose face was found and the label accuracy on found faces, against the model's accuracy on
the same faces' original crops. Tune on `--split val` (faces from Training), then report on `--split test`
once. Writes reports/framing.{md,json} (test) or reports/framing-val.{md,json} (val).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def texture(rng: np.random.Generator, height: int = 480, width: int = 640) -> np.ndarray:
    """A cluttered background: blurred noise at two scales, a lighting gradient and a few shapes."""
    coarse = cv2.resize(rng.integers(0, 256, (height // 40, width // 40), dtype=np.uint8), (width, height),
                        interpolation=cv2.INTER_CUBIC).astype(np.float32)
    fine = cv2.GaussianBlur(rng.normal(0, 40, (height, width)).astype(np.float32), (0, 0), 2)
    gradient = np.linspace(-40, 40, width, dtype=np.float32)[None, :] * rng.choice([-1, 1])
    image = np.clip(0.6 * coarse + fine + gradient + 40, 0, 255).astype(np.uint8)
    for _ in range(6):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, centre, int(rng.integers(10, 60)), int(rng.integers(0, 256)), -1)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def make_video(faces: np.ndarray, path: Path, frames_per_face: int, seed: int,
               sizes: tuple[int, int] = (80, 300)) -> list[tuple[int, int, int]]:
    """Write the clip; return each frame's (face index, centre x, centre y)."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    truth = []
    for i, face in enumerate(faces):
        background, size = texture(rng), int(rng.integers(sizes[0], sizes[1] + 1))
        start = rng.uniform([size / 2, size / 2], [640 - size / 2, 480 - size / 2])
        drift = rng.uniform(-4, 4, 2)
        big = cv2.cvtColor(cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)
        for f in range(frames_per_face):
            cx, cy = np.clip(start + f * drift, [size / 2, size / 2], [640 - size / 2, 480 - size / 2]).astype(int)
            frame = background.copy()
            frame[cy - size // 2:cy - size // 2 + size, cx - size // 2:cx - size // 2 + size] = big
            writer.write(frame)
            truth.append((i, int(cx), int(cy)))
    writer.release()
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FER2013 in the Kaggle layout (zip or folder)")
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--faces", type=int, default=600)
    parser.add_argument("--frames-per-face", type=int, default=5)
    parser.add_argument("--model", default=None, help="default: the runner's resolution rule")
    parser.add_argument("--margin", type=float, nargs="+", default=[0.05])
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.5], help="BlazeFace score thresholds")
    parser.add_argument("--tiles", nargs="+", default=["[2,3]", "[2]", "[]"],
                        help="BlazeFace's passes over tiles (times the scale) when a frame finds no face")
    parser.add_argument("--confident", type=float, nargs="+", default=[0.6],
                        help="BlazeFace keeps looking in the tiles unless a box scores this (at the threshold: only "
                             "where nothing was found)")
    parser.add_argument("--sizes", type=int, nargs=2, default=[80, 300], metavar=("MIN", "MAX"),
                        help="face width in pixels, drawn per face (the issue's range: 80-300)")
    parser.add_argument("--out", type=Path, help="default: reports/framing (test), reports/framing-val (val)")
    args = parser.parse_args()
    # a validation sweep must not overwrite the test report (the two are read side by side)
    args.out = args.out or REPO / "reports" / ("framing" if args.split == "test" else f"framing-{args.split}")

    from pipeline.config import compose, parse_params
    from pipeline.data import read_source
    from pipeline.files import write_json, write_text
    from pipeline.inference.contract import CLASSES
    from pipeline.inference.realtime import load_config, run
    from pipeline.timing import machine

    cfg = parse_params(compose(["data=fer2013", f"data.path={args.data}"])).data
    splits, _ = read_source(cfg)
    x, y = splits.arrays[args.split]
    pick = np.random.default_rng(0).permutation(len(y))[: args.faces]
    x, y = x[pick], y[pick]
    rows = []
    from pipeline.inference import ExpressionRecognizer

    crop_right = ExpressionRecognizer(args.model).predict_faces(x).argmax(axis=1) == y
    crop_accuracy = float(crop_right.mean())
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "faces.avi"
        truth = make_video(x, video, args.frames_per_face, seed=1, sizes=tuple(args.sizes))
        settings = [(m, t, k, c) for t in args.threshold for m in args.margin for k in args.tiles
                    for c in args.confident]
        for n, (margin, threshold, tiles, confident) in enumerate(settings):
            out = Path(tmp) / f"out-{n}.jsonl"  # one file per setting: the runner never overwrites one
            overrides = [f"source={video}", "display=false", f"output.json={out}", "smoothing=0",
                         f"margin={margin}", f"detector.score_threshold={threshold}", f"detector.tiles={tiles}",
                         f"detector.confident={confident}"]
            overrides += [f"model={args.model}"] if args.model else []
            stats = run(load_config(overrides))
            records = [json.loads(line) for line in out.read_text().splitlines()]
            found = right = extra = crops_right = 0
            for record, (i, cx, cy) in zip(records, truth, strict=True):
                hit = [f for f in record["faces"] if f["box"][0] <= cx <= f["box"][0] + f["box"][2]
                       and f["box"][1] <= cy <= f["box"][1] + f["box"][3]]
                found += bool(hit)
                right += bool(hit) and hit[0]["label"] == CLASSES[y[i]]
                extra += len(record["faces"]) - len(hit[:1])  # boxes that are not the face
                crops_right += bool(hit) and bool(crop_right[i])  # the crop's answer on the same found faces
            rows.append({"margin": margin, "threshold": threshold, "tiles": tiles, "confident": confident,
                         "frames": len(records),
                         "detect_ms_mean": stats.table()["detect"]["mean_ms"],
                         "found": found / len(records), "label_accuracy_on_found": right / max(found, 1),
                         "false_boxes": extra, "crop_accuracy_on_found": crops_right / max(found, 1)})
            print(f"margin {margin} threshold {threshold} tiles {tiles} confident {confident}: "
                  f"found {found}/{len(records)}, labels right on "
                  f"{right}/{found}, {extra} false boxes", flush=True)
    result = {"measured": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "split": args.split, "faces": len(y), "frames_per_face": args.frames_per_face, "sizes": args.sizes,
              "model": stats.model, "crop_accuracy": crop_accuracy, "rows": rows}
    write_json(args.out.with_suffix(".json"), result)
    lines = ["# Framing: the runner's crop against FER2013's", "",
             f"Measured {result['measured'][:16].replace('T', ' ')} UTC by `benchmarks/framing.py --split "
             f"{args.split}` on {machine()['cpu']}: {len(y)} faces of the {args.split} split, each pasted "
             f"{args.sizes[0]}-{args.sizes[1]} px wide on a textured 640x480 background for {args.frames_per_face} "
             f"frames, drifting; BlazeFace and {stats.model}, smoothing off.", "",
             f"The same model on the original 48x48 crops: **{crop_accuracy:.2%}**.", "",
             "| margin | detector threshold | tiles | confident | frames | face found | other boxes | detect ms (mean) "
             "| label accuracy on found faces | the crops of the same faces | framing costs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['margin']} | {r['threshold']} | {r['tiles']} | {r['confident']} | {r['frames']} | "
              f"{r['found']:.1%} | {r['false_boxes']} | {r['detect_ms_mean']:.2f} | "
              f"{r['label_accuracy_on_found']:.2%} | {r['crop_accuracy_on_found']:.2%} | "
              f"{(r['label_accuracy_on_found'] - r['crop_accuracy_on_found']) * 100:+.1f} points |" for r in rows]
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
