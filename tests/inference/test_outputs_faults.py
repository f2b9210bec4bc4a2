"""The realtime runner on a real full disk: a small tmpfs as the output folder, the runner as a subprocess.

Whatever fills up first (the JSON lines, the table or the annotated video), the run ends with exit code 1 and
one line naming the file, and what is left on the disk is usable: every JSON line parses, the CSV parses to
whole rows, a video plays, and there is no `.partial-` file and no empty file. Needs root (to mount the tmpfs);
skipped elsewhere.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.inference.contract import CLASSES
from pipeline.inference.outputs import TABLE_COLUMNS
from tests.inference.test_realtime import frame_count, realtime

NOISE = ("model: ", "INFO: Created TensorFlow Lite XNNPACK delegate")  # what every run prints first


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`small_disk("64k")`: a tmpfs of that size, mounted for the test and unmounted after it."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a real full disk needs a tmpfs mount, which needs root")
        point = tmp_path / f"disk-{size}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)
        if os.path.ismount(point):
            subprocess.run(["umount", "-l", str(point)], check=False)


def check_left_on_disk(disk: Path) -> dict[str, int]:
    """Every file on the full disk is usable; -> frames (or rows) each one holds."""
    held = {}
    for path in sorted(disk.iterdir()):
        assert not path.name.startswith(".partial-"), f"{path.name} left behind"
        assert path.stat().st_size > 0, f"{path.name} is empty"
        if path.suffix == ".jsonl":
            frames = [json.loads(line)["frame"] for line in path.read_text().splitlines()]  # each line parses
            assert frames == list(range(len(frames)))
            held[path.name] = len(frames)
        elif path.suffix == ".csv":
            with open(path, newline="") as fh:
                header, *rows = list(csv.reader(fh))
            assert header == [*TABLE_COLUMNS, *CLASSES]
            assert all(len(row) == len(header) for row in rows)  # the row the disk cut off is gone
            assert [float(r[header.index("score")]) for r in rows] == [max(map(float, r[-7:])) for r in rows]
            held[path.name] = len(rows)
        else:
            held[path.name] = frame_count(path)
            assert held[path.name] > 0, f"{path.name} does not play"
    return held


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(NOISE)]
    assert len(lines) == 1, stderr  # no second error on close, no FFmpeg chatter
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(("size", "outputs", "full"), [
    # the JSON lines and the table fill the disk: both keep the whole lines written before
    ("8k", ["output.json={d}/faces.jsonl", "output.csv={d}/faces.csv"], "faces."),
    # the annotated video fills it mid-run: the run stops there, the video plays up to that frame
    ("384k", ["output.video={d}/annotated.avi", "output.json={d}/faces.jsonl"], "annotated.avi"),
    # an mp4 whose index never fitted cannot play: it is removed, and the line says so
    ("96k", ["output.video={d}/annotated.mp4"], "annotated.mp4"),
], ids=["json-and-csv", "avi-video", "mp4-video"])
def test_a_full_disk_ends_the_run_with_one_line_and_keeps_what_was_written(
        small_disk, clip, tiny_model, tmp_path, size: str, outputs: list[str], full: str) -> None:
    disk = small_disk(size)
    result = realtime(f"source={clip[0]}", f"model={tiny_model}", "display=false",
                      *(o.format(d=disk) for o in outputs), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {disk}/{full}") and "No space left on device after " in line, line
    frames = int(line.split(" after ")[1].split()[0])
    held = check_left_on_disk(disk)
    assert all(n <= frames for name, n in held.items() if name.endswith(".jsonl"))
    if full.endswith(".avi"):
        assert frames < 60, "the run went on after the video could no longer be written"
        assert 0 < held["annotated.avi"] <= frames
    if full.endswith(".mp4"):
        assert frames < 60
        assert f"removed {disk}/annotated.mp4 (nothing usable in it)" in line
        assert not held
    if full == "faces.":
        assert held["faces.jsonl"] > 0 and "faces.csv" in held
