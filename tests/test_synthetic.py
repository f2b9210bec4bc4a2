"""The synthetic dataset is the pipeline's default, so its contract (shape, balance, determinism) and its
difficulty (shape-learnable, not pixel-learnable) are pinned here. No TensorFlow: the whole file is fast."""

import warnings

import cv2
import numpy as np
import pytest

from pipeline.inference.contract import CLASSES
from pipeline.synthetic import generate


@pytest.fixture(scope="module")
def splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_train, y_train = generate(1400, seed=1)
    x_test, y_test = generate(700, seed=2)
    return x_train, y_train, x_test, y_test


def test_labels_follow_the_canonical_alphabetical_order() -> None:
    """The generator draws class i's cues for label i: a happy face smiles (mouth corners above its centre)."""
    assert list(CLASSES) == sorted(set(CLASSES)) and len(CLASSES) == 7  # the rule: alphabetical, unique
    x, y = generate(700, seed=5, noise=0.0, max_rotation=0.0)
    happy, sad = x[y == CLASSES.index("happy")].astype(float), x[y == CLASSES.index("sad")].astype(float)
    assert np.abs(happy.mean(axis=0) - sad.mean(axis=0)).max() > 20  # labels mean different faces


def test_shapes_and_dtypes() -> None:
    x, y = generate(30, seed=0)
    assert x.shape == (30, 48, 48) and x.dtype == np.uint8
    assert y.shape == (30,) and y.dtype == np.uint8
    assert set(np.unique(y)) <= set(range(len(CLASSES)))
    assert all(img.std() > 10 for img in x)  # no blank or flat images


@pytest.mark.parametrize("n", [7, 8, 100, 701])
def test_labels_are_balanced(n: int) -> None:
    counts = np.bincount(generate(n, seed=3)[1], minlength=len(CLASSES))
    assert counts.sum() == n and counts.max() - counts.min() <= 1


def test_labels_are_shuffled() -> None:
    y = generate(70, seed=0)[1]
    assert not np.array_equal(y, np.arange(70) % len(CLASSES))


def test_same_arguments_give_identical_bytes() -> None:
    x1, y1 = generate(50, seed=42, noise=0.05, max_rotation=10.0)
    x2, y2 = generate(50, seed=42, noise=0.05, max_rotation=10.0)
    assert x1.tobytes() == x2.tobytes() and y1.tobytes() == y2.tobytes()


def test_different_seeds_give_different_images() -> None:
    x1, _ = generate(50, seed=1)
    x2, _ = generate(50, seed=2)
    assert not np.array_equal(x1, x2)


def test_noise_argument_changes_images() -> None:
    clean, _ = generate(20, seed=0, noise=0.0)
    noisy, _ = generate(20, seed=0, noise=0.2)
    assert not np.array_equal(clean, noisy)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 6}, "n"),
        ({"n": 0}, "n"),
        ({"n": 10.0}, "n"),
        ({"noise": -0.01}, "noise"),
        ({"noise": 1.5}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"max_rotation": -1.0}, "max_rotation"),
        ({"max_rotation": 91.0}, "max_rotation"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs: dict, name: str) -> None:
    args = {"n": 14, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name} ") as info:
        generate(**args)
    assert "\n" not in str(info.value)


def test_images_within_a_class_differ() -> None:
    x, y = generate(70, seed=4)
    for label in range(len(CLASSES)):
        faces = x[y == label].astype(np.int16)
        assert all(np.abs(faces[i] - faces[j]).mean() > 5 for i in range(5) for j in range(i))


def test_class_means_differ_where_the_cues_are(splits) -> None:
    """Split-half noise of one class's mean is the floor; real cues must stand well above it."""
    x, y = splits[0].astype(np.float32), splits[1]

    def mean(name: str) -> np.ndarray:
        return x[y == CLASSES.index(name)].mean(axis=0)

    mouth, brows = np.s_[30:44, 14:34], np.s_[6:20, 6:42]
    neutral = x[y == CLASSES.index("neutral")]
    floor = max(np.abs(neutral[::2].mean(0) - neutral[1::2].mean(0))[r].mean() for r in (mouth, brows))
    assert np.abs(mean("happy") - mean("sad"))[mouth].mean() > 1.5 * floor
    assert np.abs(mean("surprise") - mean("neutral"))[mouth].mean() > 1.5 * floor
    assert np.abs(mean("angry") - mean("surprise"))[brows].mean() > 1.5 * floor


def test_raw_pixels_alone_do_not_solve_it(splits) -> None:
    """A linear model on pixels must find some signal but stay far from what a small CNN reaches (>0.93)."""
    pytest.importorskip("sklearn")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x_train, y_train, x_test, y_test = splits
    # One BLAS thread: multi-threaded BLAS ran ~20x slower on a busy 2-core machine. 100 iterations land
    # within a point of the converged accuracy.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(max_iter=100).fit(x_train.reshape(len(x_train), -1) / 255.0, y_train)
    accuracy = model.score(x_test.reshape(len(x_test), -1) / 255.0, y_test)
    assert 0.2 <= accuracy <= 0.6


def test_shape_features_do_solve_it(splits) -> None:
    """Gradient-orientation (HOG) features plus a linear model stand in for a CNN: shape carries the class."""
    pytest.importorskip("sklearn")
    from sklearn.linear_model import RidgeClassifier
    from threadpoolctl import threadpool_limits

    hog = cv2.HOGDescriptor((48, 48), (16, 16), (8, 8), (8, 8), 9)
    x_train, y_train, x_test, y_test = splits
    f_train = np.stack([hog.compute(img).ravel() for img in x_train])
    f_test = np.stack([hog.compute(img).ravel() for img in x_test])
    with threadpool_limits(1):
        accuracy = RidgeClassifier(alpha=1.0).fit(f_train, y_train).score(f_test, y_test)
    assert accuracy >= 0.75
