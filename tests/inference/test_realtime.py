"""The realtime runner on real inputs: a video written with OpenCV, an image folder, an HTTP MJPEG stream that
drops, and the errors a user meets first. The runner runs as a subprocess, as a user starts it; the classifier
is a tiny untrained .tflite (tests/fixtures/tiny_model.py), so a fresh clone needs no pipeline run, no
TensorFlow and no network.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.inference.contract import CLASSES, FRAMING_MARGIN
from pipeline.inference.realtime import Smoother, load_config
from tests.conftest import realtime
from tests.fixtures import videos as VIDEO

REPO = Path(__file__).resolve().parents[2]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def frame_count(path: Path) -> int:
    capture, n = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        n += 1
    capture.release()
    return n


def test_video_run_finds_the_face_writes_json_lines_and_an_annotated_video(clip, tiny_model, tmp_path) -> None:
    path, truth = clip
    result = realtime(f"source={path}", f"model={tiny_model}", "display=false", "output.json=out/faces.jsonl",
                      "output.video=out/annotated.avi", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fer-realtime: 60 frames" in result.stdout and "end_to_end" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "out" / "faces.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(60))
    hits = 0
    for record, (cx, cy, size) in zip(records, truth, strict=True):
        for face in record["faces"]:
            x, y, w, h = face["box"]
            assert face["label"] in CLASSES and set(face["probs"]) == set(CLASSES)
            assert abs(sum(face["probs"].values()) - 1) < 2e-3 and face["score"] == max(face["probs"].values())
            hits += x <= cx <= x + w and y <= cy <= y + h and 0.5 < w / size < 2
    assert hits >= 0.9 * 60, f"the face was found in only {hits}/60 frames"
    assert records[30]["time_s"] == pytest.approx(1.0, abs=1e-3)  # media time for files: frame / fps
    assert frame_count(tmp_path / "out" / "annotated.avi") == 60


def test_image_folder_run_writes_annotated_images_and_skips_a_corrupt_one(clip, tiny_model, tmp_path) -> None:
    photo = cv2.imread(str(VIDEO.PHOTO))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate((90, 150, 240)):
        cv2.imwrite(str(folder / f"face{i}.png"), VIDEO.render(photo, 320, 240, size))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image")
    result = realtime(f"source={folder}", f"model={tiny_model}", "output.images=annotated", "output.json=-",
                      cwd=tmp_path)  # display=true by default: there is no screen here, so it says so and goes on
    assert result.returncode == 0, result.stderr
    assert "running headless" in result.stderr and "broken.jpg: not a readable image, skipped" in result.stderr
    assert "fer-realtime: 3 frames, 3 faces" in result.stderr and "1 skipped" in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == ["face0.png", "face1.png", "face2.png"]
    assert all(len(r["faces"]) == 1 for r in records)
    written = sorted(p.name for p in (tmp_path / "annotated").iterdir())
    assert written == ["face0.png", "face1.png", "face2.png"]
    assert cv2.imread(str(tmp_path / "annotated" / "face1.png")).shape == (480, 640, 3)


def test_a_frame_with_twenty_faces_gets_twenty_labels(tiny_model, tmp_path) -> None:
    """Haar here: BlazeFace short-range is for faces near the camera and misses 65 px faces in a 640x480 crowd."""
    face = cv2.resize(cv2.imread(str(VIDEO.PHOTO))[40:220, 135:315], (120, 120))
    crowd = np.full((480, 640, 3), 118, np.uint8)
    for row in range(4):
        for col in range(5):
            crowd[row * 120 : (row + 1) * 120, col * 128 + 4 : col * 128 + 124] = face
    cv2.imwrite(str(tmp_path / "crowd.png"), crowd)
    result = realtime(f"source={tmp_path / 'crowd.png'}", f"model={tiny_model}", "display=false", "detector=haar",
                      "output.json=-", "output.images=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["faces"]) == 20
    assert (tmp_path / "out" / "crowd.png").is_file()


@pytest.fixture
def mjpeg_server() -> Iterator[tuple[str, int]]:
    """An HTTP MJPEG camera on 127.0.0.1 that sends a few frames, then drops the connection."""
    photo, frames = cv2.imread(str(VIDEO.PHOTO)), 12
    jpegs = [cv2.imencode(".jpg", VIDEO.render(photo, *VIDEO.face_path(i, frames)))[1].tobytes()
             for i in range(frames)]

    class Camera(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for jpeg in jpegs:
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%b\r\n"
                                 % (len(jpeg), jpeg))
                self.wfile.flush()
                time.sleep(0.01)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg", frames
    server.shutdown()
    thread.join(timeout=10)


def test_stream_that_drops_ends_cleanly_with_the_summary(mjpeg_server, tiny_model, tmp_path) -> None:
    url, frames = mjpeg_server
    result = realtime(f"source={url}", f"model={tiny_model}", "display=false", "output.json=-", "timeout_s=5",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == frames
    assert f"fer-realtime: {frames} frames" in result.stderr


def _corrupt(tmp_path: Path, model: Path) -> str:
    (tmp_path / "model.tflite").write_bytes(model.read_bytes()[:2000])
    (tmp_path / "labels.json").write_text(json.dumps(list(CLASSES)))
    return str(tmp_path / "model.tflite")


def _blazeface(tmp_path: Path, model: Path) -> str:
    blazeface = REPO / "pipeline/inference/assets/face_detection_short_range.tflite"
    (tmp_path / "blaze.tflite").write_bytes(blazeface.read_bytes())
    (tmp_path / "labels.json").write_text(json.dumps(list(CLASSES)))
    return str(tmp_path / "blaze.tflite")


@pytest.mark.parametrize(("source", "model", "expected"), [
    ("7", None, "error: camera 7 did not open"),
    ("missing.mp4", None, "error: missing.mp4: no such file or folder"),
    ("CLIP", _corrupt, "not a loadable .tflite"),
    ("CLIP", _blazeface, "input shape (1, 128, 128, 3), expected (1, 48, 48, 1)"),
    ("CLIP", lambda tmp, model: str(tmp / "nothing.tflite"), "nothing.tflite: model file not found"),
])
def test_errors_are_one_clear_line_and_a_nonzero_exit(clip, tiny_model, tmp_path, source, model, expected) -> None:
    model_arg = model(tmp_path, tiny_model) if model else str(tiny_model)
    result = realtime(f"source={clip[0] if source == 'CLIP' else source}", f"model={model_arg}", "display=false",
                      cwd=tmp_path)
    assert result.returncode == 1
    assert last_line(result.stderr).startswith("error: ") and expected in last_line(result.stderr)
    assert "Traceback" not in result.stderr


def test_runner_never_imports_tensorflow(clip, tiny_model, tmp_path) -> None:
    code = ("import sys\nfrom pipeline.inference.realtime import main\n"
            f"try:\n    main(['source={clip[0]}', 'model={tiny_model}', 'display=false', 'max_frames=5'])\n"
            "finally:\n    print('tensorflow loaded:', 'tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "fer-realtime: 5 frames" in result.stdout
    assert "tensorflow loaded: False" in result.stdout


def test_config_defaults_and_detector_choice() -> None:
    cfg = load_config([])
    assert cfg.model is None and cfg.source == "0" and cfg.detector.name == "blazeface"  # None: the resolution rule
    assert cfg.margin == FRAMING_MARGIN  # the runner frames faces as the API and the benchmark do
    haar = load_config(["detector=haar", "source=clip.mp4", "display=false", "output.json=-"])
    assert haar.detector.name == "haar" and haar.detector.min_neighbors == 5
    assert (haar.source, haar.display, haar.output.json) == ("clip.mp4", False, "-")


@pytest.mark.parametrize(("overrides", "expected"), [
    (["smoothing=1.5"], "smoothing = 1.5: must be >= 0.0 and < 1.0"),
    (["threads=0"], "threads = 0: must be >= 1"),
    (["min_face=big"], "min_face: Value 'big' of type 'str' could not be converted to Integer"),
    (["colour=red"], "colour: unknown key (allowed: model, tracking_uri,"),
    (["+output.gif=a.gif"], "output.gif: unknown key"),
    (["detector.threads=0"], "detector.threads = 0: must be >= 1"),
    (["detector=mtcnn"], "Could not find 'detector/mtcnn' (options: blazeface, haar)"),
])
def test_bad_config_names_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert str(err.value).startswith(expected) or expected in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_exits_2(tmp_path) -> None:
    result = realtime("smoothing=-1", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == "error: smoothing = -1.0: must be >= 0.0 and < 1.0"


def test_smoother_follows_a_face_by_iou_and_starts_new_faces_fresh() -> None:
    smoother = Smoother(0.5)
    a, b = np.eye(7, dtype=np.float32)[[0]], np.eye(7, dtype=np.float32)[[3]]
    box = np.array([[100, 100, 80, 80]], np.float32)
    assert smoother.update(box, a.copy())[0, 0] == 1.0
    moved = smoother.update(box + 5, b.copy())  # same face, a little further: averaged with its past
    assert moved[0, 0] == pytest.approx(0.5) and moved[0, 3] == pytest.approx(0.5)
    elsewhere = smoother.update(box + 300, a.copy())  # no overlap: a new face, not smoothed
    assert elsewhere[0, 0] == 1.0 and elsewhere[0, 3] == 0.0
    assert Smoother(0.0).update(box, b.copy())[0, 3] == 1.0


def test_a_folder_becomes_a_table_with_a_row_per_face_and_a_label_summary(tiny_model, tmp_path) -> None:
    photo = cv2.imread(str(VIDEO.PHOTO))
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate((100, 180)):
        cv2.imwrite(str(folder / f"face{i}.jpg"), VIDEO.render(photo, 320, 240, size))
    cv2.imwrite(str(folder / "empty.jpg"), np.full((240, 320, 3), 90, np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    result = realtime(f"source={folder}", f"model={tiny_model}", "display=false", "output.csv=out/faces.csv",
                      "output.parquet=out/faces.parquet", "progress=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "faces.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == ["face0.jpg", "face1.jpg"]  # one row per face; no face, no row
    assert list(rows[0])[-7:] == list(CLASSES)
    for row in rows:
        probs = {c: float(row[c]) for c in CLASSES}
        assert row["label"] == max(probs, key=probs.get) and float(row["score"]) == max(probs.values())
        assert int(row["w"]) > 50 and row["face"] == "0"
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "faces.parquet")
    assert table.num_rows == 2 and table.column("w").type.id == 9 and table.column("file").to_pylist()[1] == "face1.jpg"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["faces.csv", "faces.parquet"]  # no partials
    assert "labels: " in result.stdout and "frames without a face: 1" in result.stdout
    assert "broken.png: not a readable image, skipped" in result.stderr and "1 skipped" in result.stdout
    assert "frame/s]" in result.stderr or "frame]" in result.stderr  # the tqdm bar, forced on with progress=true


def test_the_model_line_says_which_model_runs_and_why(clip, tiny_model, tmp_path) -> None:
    result = realtime(f"source={clip[0]}", f"model={tiny_model}", "display=false", "max_frames=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"model: {tiny_model} (asked for with model=)" in result.stderr.splitlines()


def test_help_lists_every_key_from_any_directory(tmp_path) -> None:
    result = realtime("--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage:")
    for key in ("model:", "source:", "output:", "csv:", "parquet:", "overwrite:", "progress:", "pace:", "smoothing:",
                "detector"):
        assert key in result.stdout


def test_truncated_images_in_a_folder_are_skipped_by_name_and_counted(tiny_model, tmp_path) -> None:
    """`cv2.imread` decodes a cut JPEG anyway (grey below the cut) and libjpeg prints `Premature end of JPEG
    file` naming no file: the cut images used to become rows with labels."""
    photo = VIDEO.render(cv2.imread(str(VIDEO.PHOTO)), 320, 240, 150)
    folder = tmp_path / "photos"
    folder.mkdir()
    jpeg, png = cv2.imencode(".jpg", photo)[1].tobytes(), cv2.imencode(".png", photo)[1].tobytes()
    (folder / "a_whole.jpg").write_bytes(jpeg)
    (folder / "b_cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    (folder / "c_cut_by_one_byte.jpg").write_bytes(jpeg[:-1])
    (folder / "d_cut.png").write_bytes(png[: len(png) // 2])
    (folder / "e_trailer.jpg").write_bytes(jpeg + b"\0" * 16)  # bytes after the end marker: a whole image
    (folder / "f_empty.jpg").write_bytes(b"")
    result = realtime(f"source={folder}", f"model={tiny_model}", "display=false", "output.csv=faces.csv",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Premature end" not in result.stderr and "libpng" not in result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {folder}/b_cut.jpg: truncated JPEG (the file ends before the image does), skipped",
                     f"note: {folder}/c_cut_by_one_byte.jpg: truncated JPEG (the file ends before the image does), "
                     "skipped",
                     f"note: {folder}/d_cut.png: truncated PNG (the file ends before the image does), skipped",
                     f"note: {folder}/f_empty.jpg: empty file (0 bytes), skipped"]
    assert "fer-realtime: 2 frames, 2 faces" in result.stdout and "4 skipped" in result.stdout
    assert "  skipped: 2 truncated JPEG, 1 truncated PNG, 1 empty file" in result.stdout
    with open(tmp_path / "faces.csv", newline="") as fh:
        assert [r["file"] for r in csv.DictReader(fh)] == ["a_whole.jpg", "e_trailer.jpg"]
    single = realtime(f"source={folder / 'b_cut.jpg'}", f"model={tiny_model}", "display=false", cwd=tmp_path)
    assert single.returncode == 1 and single.stderr.strip().splitlines()[-1] == (
        f"error: {folder}/b_cut.jpg: truncated JPEG (the file ends before the image does)")


def test_an_animated_gif_in_a_folder_is_read_as_its_first_frame(tiny_model, tmp_path) -> None:
    """A 2-frame GIF used to be left out of a folder source (and a lone one played as a video)."""
    from PIL import Image

    photo = VIDEO.render(cv2.imread(str(VIDEO.PHOTO)), 320, 240, 150)
    folder = tmp_path / "photos"
    folder.mkdir()
    first, second = Image.fromarray(photo[:, :, ::-1]), Image.fromarray(np.full_like(photo, 90))
    first.save(folder / "two_frames.gif", save_all=True, append_images=[second], duration=100, loop=0)
    (folder / "cut.gif").write_bytes((folder / "two_frames.gif").read_bytes()[:20])
    result = realtime(f"source={folder}", f"model={tiny_model}", "display=false", "output.json=-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["image"] == "two_frames.gif" and len(record["faces"]) == 1  # the face of the first frame
    assert f"note: {folder}/cut.gif: truncated GIF (the file ends before the image does), skipped" in result.stderr
    assert "1 skipped" in result.stderr
    single = realtime(f"source={folder / 'two_frames.gif'}", f"model={tiny_model}", "display=false",
                      "output.json=-", cwd=tmp_path)
    assert single.returncode == 0 and json.loads(single.stdout)["image"] == "two_frames.gif"


class _Capture:
    def __init__(self, fps: float) -> None:
        self.fps = fps

    def get(self, prop: int) -> float:
        return self.fps


@pytest.mark.parametrize(("pace", "kind", "window", "expected"), [
    (None, "file", True, True),  # a clip in a window plays at its own rate by default
    (None, "file", False, False),  # headless: as fast as the machine goes
    (False, "file", True, False),  # asked to run flat out
    (True, "file", False, True),  # asked to pace headless too
    (None, "webcam", True, False), (True, "stream", True, False),  # live sources come at their own rate
    (None, "images", True, False), (True, "file without fps", True, False),
])
def test_which_sources_are_paced(pace, kind, window, expected) -> None:
    from pipeline.inference.media import CaptureSource, ImageSource
    from pipeline.inference.realtime import paced

    source = (ImageSource([Path("a.jpg")]) if kind == "images" else
              CaptureSource(_Capture(0.0 if kind == "file without fps" else 25.0), live=kind in ("webcam", "stream")))
    assert paced(pace, source, window) is expected


def test_the_pacer_holds_frames_to_the_clips_rate_and_never_races_to_catch_up() -> None:
    from pipeline.inference.realtime import Pacer

    pacer, ms = Pacer(25.0), 1_000_000  # a frame every 40 ms
    assert pacer.wait_s(0, 1000 * ms) == 0.0  # the first frame starts the clock
    assert pacer.wait_s(1, 1010 * ms) == pytest.approx(0.030)  # done in 10 ms: wait the other 30
    assert pacer.wait_s(2, 1080 * ms) == 0.0  # exactly due
    assert pacer.wait_s(3, 1125 * ms) == 0.0  # 5 ms late: shown at once, the schedule kept
    assert pacer.wait_s(4, 1150 * ms) == pytest.approx(0.010)  # back on schedule
    assert pacer.wait_s(5, 2000 * ms) == 0.0  # a stall (window dragged): no burst of frames afterwards,
    assert pacer.wait_s(6, 2001 * ms) == pytest.approx(0.039)  # the clock restarts at the late frame


def test_a_paced_run_waits_before_each_frame(clip, tiny_model, monkeypatch) -> None:
    """The loop asks the pacer before each frame (pace=true headless here: no window in a test)."""
    from pipeline.inference import realtime as module

    waits: list[float] = []
    monkeypatch.setattr(module.time, "sleep", waits.append)
    cfg = load_config([f"source={clip[0]}", f"model={tiny_model}", "display=false", "max_frames=5", "pace=true"])
    assert module.run(cfg).frames == 5
    # the sleeps are stubbed, so the clock barely moves: frame i waits until i/30 s (the clip's rate) after the first
    assert len(waits) == 5 and waits[-1] > 0 and all(0 <= w <= i / 30 + 1e-9 for i, w in enumerate(waits))
    waits.clear()
    module.run(load_config([f"source={clip[0]}", f"model={tiny_model}", "display=false", "max_frames=5"]))
    assert waits == []  # headless by default: flat out
