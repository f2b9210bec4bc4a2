"""A 640x480 test video of one real face moving and scaling (80-300 px), made from the vendored astronaut photo.

The realtime tests, the CI smoke run in the lean venv and the benchmark all need the same kind of clip: a real
face (so the detector has real work), moving and changing size (so a runner cannot win by caching one box),
and no download. It uses only OpenCV and NumPy, so it runs in the lean venv too, and it returns where the face
is in every frame, so a test can check the boxes and not just count them.

    python benchmarks/make_test_video.py out.mp4 [--frames 300] [--fps 30]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np

PHOTO = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "astronaut.jpg"
FACE_CENTRE = (225.0, 128.0)  # the face's centre and width in the 512x512 photo
FACE_SIZE = 94.0
WIDTH, HEIGHT = 640, 480
CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def face_path(i: int, frames: int, small: float = 80.0, large: float = 300.0) -> tuple[float, float, float]:
    """Centre x, y and face width in frame i: one grow-and-shrink cycle while the centre sweeps the frame."""
    t = i / max(frames - 1, 1)
    size = small + (large - small) * 0.5 * (1.0 - math.cos(2.0 * math.pi * t))
    room_x, room_y = WIDTH / 2 - size / 2 - 8, HEIGHT / 2 - size / 2 - 8
    cx = WIDTH / 2 + max(room_x, 0.0) * math.sin(2.0 * math.pi * 2.0 * t)
    cy = HEIGHT / 2 + max(room_y, 0.0) * math.sin(2.0 * math.pi * 3.0 * t + 0.5)
    return cx, cy, size


def render(photo: np.ndarray, cx: float, cy: float, size: float) -> np.ndarray:
    """The photo scaled so its face is `size` px wide and centred at (cx, cy), on a gray 640x480 frame."""
    scale = size / FACE_SIZE
    scaled = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.full((HEIGHT, WIDTH, 3), 118, dtype=np.uint8)
    ox, oy = round(cx - FACE_CENTRE[0] * scale), round(cy - FACE_CENTRE[1] * scale)
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + scaled.shape[1], WIDTH), min(oy + scaled.shape[0], HEIGHT)
    frame[y0:y1, x0:x1] = scaled[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return frame


def make_video(path: str | Path, frames: int = 60, fps: float = 30.0) -> list[tuple[float, float, float]]:
    """Write the clip (codec from the suffix: .mp4 mp4v, else MJPG) and return each frame's (cx, cy, size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    photo = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    if photo is None:
        raise SystemExit(f"error: cannot read {PHOTO}")
    fourcc = cv2.VideoWriter_fourcc(*CODECS.get(path.suffix.lower(), "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise SystemExit(f"error: OpenCV cannot write {path}")
    truth = [face_path(i, frames) for i in range(frames)]
    for cx, cy, size in truth:
        writer.write(render(photo, cx, cy, size))
    writer.release()
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30.0)
    args = parser.parse_args()
    make_video(args.path, args.frames, args.fps)
    print(f"wrote {args.path}: {args.frames} frames of {WIDTH}x{HEIGHT}, face 80-300 px")


if __name__ == "__main__":
    main()
