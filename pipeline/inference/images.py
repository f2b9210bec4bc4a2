"""Image files as bytes -> BGR arrays, with the reason when they cannot be used, for the runner and the served model.

OpenCV and NumPy only, and nothing else of the project beyond `contract`: a copy of this file ships inside
every registered model (the pyfunc in `serving.py` decodes the images POSTed to it with it).
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections.abc import Iterator

import numpy as np

try:
    from pipeline.inference.contract import OPENCV_MISSING
except ImportError:  # the copy inside a registered model, loaded outside this project
    from contract import OPENCV_MISSING  # type: ignore[no-redef]

try:
    import cv2
except ImportError as e:  # neither OpenCV extra installed
    raise ImportError(OPENCV_MISSING) from e

CUT = "the file ends before the image does"


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """libjpeg and libpng print warnings such as `Premature end of JPEG file` straight to file descriptor 2,
    naming no file (OpenCV's log level does not reach them); the caller's own line names the file instead.
    Process-wide, so for a single-threaded caller only (the runner decodes on its main thread; its sink
    thread never prints); the server does not use it."""
    sys.stderr.flush()
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cut_short(data: bytes) -> str | None:
    """The format of an image file whose end is missing, or None. A JPEG ends with its end-of-image marker
    (FFD9) after its last start-of-scan (FFDA; the marker cannot occur inside scan data), a PNG with its IEND
    chunk. `cv2.imread` decodes a cut JPEG anyway, grey below the cut, so its faces would be made up."""
    if data.startswith(b"\xff\xd8"):
        return "JPEG" if data.rfind(b"\xff\xd9") < max(data.rfind(b"\xff\xda"), 2) else None
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in data[-64:] else "PNG"
    return None


def pixel_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's or JPEG's header, without decoding: a server refuses a decompression bomb
    (a small file of a huge image) before it allocates the pixels. None when the header does not say."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None


def decode(data: bytes, quiet: bool = True) -> tuple[np.ndarray | None, str]:
    """(BGR image, "") or (None, why it cannot be used: the words a user sees after the file's name).

    A GIF gives its first frame (OpenCV 4.11+ decodes GIF). `quiet` silences the codecs' own unnamed
    warnings (see quiet_stderr)."""
    if not data:
        return None, "empty file (0 bytes)"
    if kind := cut_short(data):
        return None, f"truncated {kind} ({CUT})"
    with quiet_stderr() if quiet else contextlib.nullcontext():
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is not None:
        return frame, ""
    if data.startswith(b"GIF8"):  # a GIF ends with its trailer byte ";"
        if not data.endswith(b";"):
            return None, f"truncated GIF ({CUT})"
        return None, f"not a readable GIF (damaged, or this OpenCV {cv2.__version__} cannot decode GIFs: convert it)"
    return None, "not a readable image"
