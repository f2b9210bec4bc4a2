"""Images over HTTP: a registered version behind MLflow's own scoring server (`mlflow models serve`, 127.0.0.1)
takes whole JPEG/PNG images in base64 as well as 48x48 crops, and answers bad input with a short 400.

The version is the tiny untrained classifier registered by `registry.log_pyfunc` (what the quantize stage
calls) in a temporary SQLite store: the serving contract is under test, not accuracy, and no TensorFlow runs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.inference.contract import CLASSES
from tests.conftest import BIN, REPO, free_port, wait_http

PHOTO = REPO / "pipeline" / "inference" / "assets" / "astronaut.jpg"
FACE_CENTRE = (225.0, 128.0)  # in the 512x512 photo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[str]:
    """The URL of /invocations of `mlflow models serve` on a version registered like the quantize stage does."""
    root = tmp_path_factory.mktemp("serving")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "PYTHONPATH": str(REPO),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn, as in an activated venv
    register = ("import numpy as np, mlflow, sys\nfrom pathlib import Path\n"
                "from pipeline.inference.registry import log_pyfunc\n"
                "with mlflow.start_run():\n"
                f"    log_pyfunc(Path({str(tiny_model)!r}), 'fer-served', np.zeros((2, 48, 48), np.uint8))\n")
    subprocess.run([sys.executable, "-c", register], cwd=root, env=env, check=True, capture_output=True, timeout=300)
    port = free_port()
    with open(root / "serve.log", "w") as log:
        server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/fer-served/1",
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                  cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=180, process=server)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def images(*payloads: bytes) -> bytes:
    return json.dumps({"inputs": {"image": [base64.b64encode(p).decode() for p in payloads]}}).encode()


def test_a_posted_jpeg_gives_its_face_with_box_label_and_probabilities(served) -> None:
    status, body = post(served, images(PHOTO.read_bytes()))
    assert status == 200, body
    (result,) = json.loads(body)["predictions"]
    assert (result["width"], result["height"]) == (512, 512)
    (face,) = result["faces"]
    x, y, w, h = face["box"]
    assert x <= FACE_CENTRE[0] <= x + w and y <= FACE_CENTRE[1] <= y + h and 60 < w < 140
    assert list(face["probs"]) == list(CLASSES) and face["label"] == max(face["probs"], key=face["probs"].get)
    assert face["score"] == face["probs"][face["label"]] and abs(sum(face["probs"].values()) - 1) < 2e-3
    assert 0.5 <= face["face_score"] <= 1.0


def test_a_4000x3000_photo_and_a_png_in_one_request(served) -> None:
    photo = cv2.imread(str(PHOTO))
    big = cv2.resize(photo, (4000, 4000), interpolation=cv2.INTER_CUBIC)[:3000]  # a 12 MP photo, the face x7.8
    jpeg = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    png = cv2.imencode(".png", np.full((60, 80, 3), 128, np.uint8))[1].tobytes()
    status, body = post(served, images(jpeg, png))
    assert status == 200, body[:500]
    first, second = json.loads(body)["predictions"]
    assert (first["width"], first["height"]) == (4000, 3000) and len(first["faces"]) == 1
    x, y, w, h = first["faces"][0]["box"]
    cx, cy = FACE_CENTRE[0] * 4000 / 512, FACE_CENTRE[1] * 4000 / 512
    assert x <= cx <= x + w and y <= cy <= y + h and 500 < w < 1100
    assert second == {"width": 80, "height": 60, "faces": []}  # no face: an empty list, not an error


def test_crops_are_still_scored_as_before(served) -> None:
    crops = np.random.default_rng(0).integers(0, 256, (3, 48, 48)).tolist()
    status, body = post(served, json.dumps({"inputs": crops}).encode())
    assert status == 200, body
    scores = np.array(json.loads(body)["predictions"])
    assert scores.shape == (3, 7) and np.allclose(scores.sum(axis=1), 1, atol=2e-3)


@pytest.mark.parametrize(("body", "message"), [
    (images(PHOTO.read_bytes()[:-4000]), "image 0: truncated JPEG (the file ends before the image does)"),
    (images(b"GIF89a not really"), "image 0: "),
    (images(b"\xff\xd8\xff\xe0 this is no jpeg \xff\xd9"), "image 0: not a readable image"),
    (json.dumps({"inputs": {"image": ["%%% not base64"]}}).encode(), "image 0: not valid base64"),
    (json.dumps({"inputs": {"image": []}}).encode(), "image: no images in the request"),
    (json.dumps({"inputs": np.zeros((2, 30, 30), int).tolist()}).encode(), "crops of shape (2, 30, 30): expected"),
    (b"", ""),  # an empty body: MLflow's own parser answers, briefly
])
def test_bad_input_is_a_short_400(served, body, message) -> None:
    status, text = post(served, body)
    assert status == 400, text[:500]
    assert len(text) < 400, f"{len(text)} characters: {text[:500]}"
    assert message in json.loads(text)["message"]


def test_a_decompression_bomb_is_refused_before_decoding(served) -> None:
    """A PNG header claiming 30000x30000 pixels (2.7 GB decoded) in a few bytes."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk + b"\0\0\0\0IEND\xaeB`\x82"
    status, text = post(served, images(bomb))
    assert status == 400 and json.loads(text)["message"] == "image 0: 30000x30000 pixels, more than 50 MP"
