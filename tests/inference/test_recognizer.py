"""The Python API on a real photo (NASA's public-domain astronaut portrait) in every layout a user may hold it:
a path, BGR, RGB, gray, floats, and 48x48 crops in a batch. The tiny untrained classifier stands in for a
trained one: the contract (boxes, labels, probabilities) is under test, not accuracy."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.inference import ExpressionRecognizer
from pipeline.inference.contract import CLASSES

PHOTO = Path(__file__).resolve().parents[2] / "pipeline" / "inference" / "assets" / "astronaut.jpg"
FACE_CENTRE = (225.0, 128.0)


@pytest.fixture(scope="module")
def rec(tiny_model: Path) -> ExpressionRecognizer:
    return ExpressionRecognizer(str(tiny_model))


def test_a_path_gives_one_face_with_box_label_score_and_seven_probabilities(rec) -> None:
    (face,) = rec.predict(PHOTO)
    x, y, w, h = face.box
    assert x <= FACE_CENTRE[0] <= x + w and y <= FACE_CENTRE[1] <= y + h and 60 < w < 140
    assert list(face.probs) == list(CLASSES) and face.label == max(face.probs, key=face.probs.get)
    assert face.score == face.probs[face.label] and abs(sum(face.probs.values()) - 1) < 1e-3
    assert 0.5 <= face.face_score <= 1.0


def test_bgr_rgb_gray_and_float_layouts_find_the_same_face(rec) -> None:
    bgr = cv2.imread(str(PHOTO))
    reference = rec.predict(bgr)[0]
    rgb = rec.predict(bgr[:, :, ::-1].copy(), channels="rgb")[0]
    assert rgb.box == reference.box and rgb.probs == reference.probs
    gray = rec.predict(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))[0]
    assert np.allclose(gray.box, reference.box, atol=8)
    floats = rec.predict(bgr.astype(np.float32) / 255.0)[0]
    assert np.allclose(floats.box, reference.box, atol=2)
    bgra = rec.predict(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))[0]
    assert bgra.box == reference.box


def test_an_image_without_a_face_gives_an_empty_list(rec) -> None:
    assert rec.predict(np.full((480, 640, 3), 120, np.uint8)) == []


@pytest.mark.parametrize(("image", "message"), [
    (np.zeros((10, 10, 5), np.uint8), r"shape \(10, 10, 5\): expected HxW, HxWx3 or HxWx4"),
    (np.full((10, 10), 300, np.int32), "dtype int32: expected uint8"),
    (np.full((10, 10), 2.0, np.float32), "floats in 0-1"),
    (Path("no/such/photo.jpg"), r"no/such/photo.jpg: cannot be read \(No such file or directory\)"),
])
def test_unusable_images_are_a_value_error_naming_the_problem(rec, image, message) -> None:
    with pytest.raises(ValueError, match=message):
        rec.predict(image)


def test_predict_faces_scores_a_batch_of_crops_like_one_at_a_time(rec) -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    batch = rec.predict_faces(crops)
    assert batch.shape == (5, 7)
    assert np.allclose(batch[2], rec.predict_faces([crops[2]])[0])
    big = cv2.resize(crops[0], (96, 96), interpolation=cv2.INTER_NEAREST)  # other sizes are resized
    assert np.allclose(rec.predict_faces([big])[0], batch[0], atol=0.02)
    assert rec.predict_faces([]).shape == (0, 7)


def test_why_names_the_model(rec, tiny_model) -> None:
    assert str(tiny_model) in rec.why and rec.labels == list(CLASSES)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_image_with_one_non_finite_pixel_is_a_value_error_naming_it(rec, bad) -> None:
    """NaN passes a min/max range check (every comparison with it is false): it used to give no faces."""
    image = cv2.imread(str(PHOTO)).astype(np.float32) / 255.0
    image[5, 7, 1] = bad
    name = "NaN" if np.isnan(bad) else "inf"
    with pytest.raises(ValueError, match=rf"image of dtype float32 has 1 {name} value\(s\) \(first at row 5, "
                                         r"column 7\): expected finite floats in 0-1"):
        rec.predict(image)



def test_one_2d_crop_is_one_answer_and_other_shapes_a_value_error_naming_them(rec) -> None:
    """A single 48x48 crop used to be read as 48 crops of one row each: 48 answers."""
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    one = rec.predict_faces(crop)
    assert one.shape == (1, 7)
    assert np.allclose(one[0], rec.predict_faces(crop[None])[0])
    assert rec.predict_faces(np.stack([crop, crop])[..., None]).shape == (2, 7)  # [N, 48, 48, 1]
    colour = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
    assert np.allclose(rec.predict_faces(colour)[0], one[0], atol=0.02)  # one colour crop, HxWx3
    assert rec.predict_faces(np.stack([colour, colour])).shape == (2, 7)  # [N, H, W, 3]
    for shape in [(48,), (2, 3, 48, 48, 1), (2, 48, 48, 2), (0, 48), (2, 0, 48)]:
        with pytest.raises(ValueError, match=rf"crops of shape {re.escape(str(shape))}: expected"):
            rec.predict_faces(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"crop 1 of shape \(0, 5\): expected"):
        rec.predict_faces([crop, np.zeros((0, 5), np.uint8)])



@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 0), (0, 40, 3), (40, 0), (0, 0, 3, 0)])
def test_an_image_without_pixels_is_a_value_error_naming_its_size(rec, shape) -> None:
    """A 0x0 image used to end in a ZeroDivisionError inside the detector."""
    for image in (np.zeros(shape, np.uint8), np.zeros(shape, np.float32)):
        with pytest.raises(ValueError, match=r"image of (size \d+x\d+ \(width x height\): no pixels|shape)"):
            rec.predict(image)


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 3), (1, 500, 3), (500, 1), (2, 3)])
def test_tiny_and_thin_images_give_no_face_and_no_error(rec, shape) -> None:
    assert rec.predict(np.full(shape, 128, np.uint8)) == []


def test_detectors_find_nothing_in_an_empty_frame() -> None:
    from pipeline.inference.detectors import make_detector

    for name in ("blazeface", "haar"):
        try:
            detector = make_detector(name)
        except RuntimeError:  # an OpenCV without Haar cascades
            continue
        assert detector.detect(np.zeros((0, 0, 3), np.uint8)) == []
        assert detector.detect(np.zeros((1, 1), np.uint8)) == []


def test_a_truncated_jpeg_path_is_a_value_error_not_a_made_up_image(rec, tmp_path) -> None:
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(PHOTO.read_bytes()[:-300])
    with pytest.raises(ValueError, match=r"cut\.jpg: truncated JPEG \(the file ends before the image does\)"):
        rec.predict(cut)
