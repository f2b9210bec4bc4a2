"""Where the runner's outputs may go, checked before any work (in-process: `check_paths` and `check_images`),
and one run end to end per rule (a subprocess, as a user starts it): a user's file is never replaced unless
`output.overwrite=true`, and an output creates only its own missing folder, never a chain of them."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import pytest

from pipeline.inference.media import RunError
from pipeline.inference.outputs import check_images, check_paths
from pipeline.inference.realtime import load_config
from tests.fixtures import videos as VIDEO
from tests.inference.test_realtime import realtime


def output(*overrides: str):
    return load_config(["display=false", *overrides]).output


@pytest.mark.parametrize("key", ["json", "csv", "parquet", "video"])
def test_an_existing_file_is_refused_naming_it_and_the_key(tmp_path, key) -> None:
    target = tmp_path / f"mine.{key}"
    target.write_text("a user's own file")
    with pytest.raises(RunError, match=rf"^{re.escape(str(target))}: exists already \(output\.{key}\); "
                                       r"output\.overwrite=true replaces it$"):
        check_paths(output(f"output.{key}={target}"), "clip.mp4")
    check_paths(output(f"output.{key}={target}", "output.overwrite=true"), "clip.mp4")  # asked for: allowed
    assert target.read_text() == "a user's own file"  # the check itself writes nothing


def test_stdout_is_not_a_file_and_new_files_pass(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("-").write_text("a file named -")  # output.json=- still means stdout
    check_paths(output("output.json=-", f"output.csv={tmp_path / 'new.csv'}"), "clip.mp4")


@pytest.mark.parametrize(("overrides", "message"), [
    (["output.csv={d}/a.csv", "output.parquet={d}/a.csv"], "{d}/a.csv: named by both output.csv and output.parquet"),
    (["output.video={d}/clip.avi", "output.overwrite=true"], "{d}/clip.avi: is the source (output.video would "
                                                               "replace it); write it elsewhere"),
    (["output.csv={d}"], "{d}: a folder (output.csv takes a file name)"),
])
def test_two_outputs_on_one_file_the_source_or_a_folder_are_refused(tmp_path, overrides, message) -> None:
    (tmp_path / "clip.avi").write_bytes(b"video")
    with pytest.raises(RunError, match=f"^{re.escape(message.format(d=tmp_path))}$"):
        check_paths(output(*(o.format(d=tmp_path) for o in overrides)), str(tmp_path / "clip.avi"))


@pytest.mark.parametrize("key", ["json", "csv", "parquet", "video", "images"])
def test_an_output_creates_only_its_own_folder(tmp_path, key) -> None:
    name = "annotated" if key == "images" else f"new/x.{key}"  # the images' own folder is the output itself
    check_paths(output(f"output.{key}={tmp_path / name}"), "clip.mp4")  # one missing level: fine
    assert not (tmp_path / name.split("/")[0]).exists()  # made when the output opens, not by the check
    deep = tmp_path / "nonexistent" / "dir" / name.split("/")[-1]
    missing = deep.parent.parent if key != "images" else deep.parent
    with pytest.raises(RunError, match=rf"^{re.escape(str(deep))}: the folder {re.escape(str(missing))} does not "
                                       rf"exist \(output\.{key} creates only its own folder"):
        check_paths(output(f"output.{key}={deep}"), "clip.mp4")
    assert not (tmp_path / "nonexistent").exists()


def test_images_never_replace_files_in_their_folder(tmp_path) -> None:
    folder = tmp_path / "annotated"
    folder.mkdir()
    (folder / "b.jpg").write_bytes(b"mine")
    cfg = output(f"output.images={folder}")
    check_images(cfg, ["a.jpg", "c.jpg"])
    with pytest.raises(RunError, match=rf"^{re.escape(str(folder / 'b.jpg'))}: exist already \(output\.images\)"):
        check_images(cfg, ["a.jpg", "b.jpg"])
    (folder / "frame_000000.jpg").write_bytes(b"an earlier run")
    with pytest.raises(RunError, match=r"frame_000000\.jpg: exist already"):
        check_images(cfg, None)  # a video's frames
    check_images(output(f"output.images={folder}", "output.overwrite=true"), None)


def test_a_run_onto_an_existing_csv_stops_with_one_line_and_keeps_the_file(clip, tiny_model, tmp_path) -> None:
    (tmp_path / "faces.csv").write_text("my spreadsheet\n")
    result = realtime(f"source={clip[0]}", f"model={tiny_model}", "display=false", "output.csv=faces.csv",
                      "max_frames=3", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: faces.csv: exists already (output.csv); output.overwrite=true replaces it"]
    assert (tmp_path / "faces.csv").read_text() == "my spreadsheet\n"
    result = realtime(f"source={clip[0]}", f"model={tiny_model}", "display=false", "output.csv=faces.csv",
                      "max_frames=3", "output.overwrite=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "faces.csv").read_text().startswith("file,frame,")


def test_a_run_into_a_missing_folder_chain_creates_nothing(tiny_model, tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "face.png"), VIDEO.render(cv2.imread(str(VIDEO.PHOTO)), 320, 240, 120))
    result = realtime(f"source={tmp_path / 'face.png'}", f"model={tiny_model}", "display=false",
                      "output.csv=nonexistent/dir/x.csv", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: nonexistent/dir/x.csv: the folder nonexistent does not exist (output.csv creates only its own "
        "folder, dir/, inside an existing one)"]
    assert not (tmp_path / "nonexistent").exists()
    result = realtime(f"source={tmp_path / 'face.png'}", f"model={tiny_model}", "display=false",
                      "output.csv=dir/x.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dir" / "x.csv").is_file()
