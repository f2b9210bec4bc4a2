"""Seeded synthetic 48x48 grayscale faces with seven expressions: the pipeline's built-in default dataset.

FER2013 has to be downloaded by hand, so without this module nothing would run out of the box. These
images have FER2013's shape, dtype and label set, and the task has the same character: a small CNN
learns it, raw pixels do not. A class is carried only by *geometry* (mouth, brows, eyes) at a random
per-sample intensity, under nuisance variation that pixel templates cannot see past: pose (rotation,
translation, scale), face shape and feature placement, skin, hair and background brightness, background
clutter, a lighting gradient, blur and Gaussian noise. No class is brighter or darker than another.

Cues per class (anything not listed stays neutral):

- angry: brows lowered and slanted down toward the centre, narrowed eyes, tight flat mouth
- disgust: lowered brows, one-sided raised upper lip (asymmetric mouth), wrinkled nose, narrowed eyes
- fear: brows raised and pulled together, wide eyes, mouth slightly open and stretched wide
- happy: upturned smile, open with teeth more often than not, slightly narrowed eyes
- neutral: straight brows, normal eyes, straight closed mouth
- sad: inner brow ends raised, downturned mouth, slightly closed eyes
- surprise: high arched brows, very wide eyes, round open mouth

Fear/surprise and angry/disgust share cues on purpose, so, as in FER2013, those pairs get confused most.
"""

import cv2
import numpy as np

from pipeline.inference.contract import CLASSES, IMAGE_SIZE

SIZE = IMAGE_SIZE
_SS = 2  # drawn at 2x, then downsampled with INTER_AREA, for anti-aliased features
_C = SIZE * _SS  # canvas side; every length below is in canvas pixels
_SHIFT = 4  # fixed-point bits for cv2 drawing: sub-pixel feature positions
_AA = cv2.LINE_AA

# Offsets from the neutral face at full intensity, indexed like CLASSES. brow_tilt > 0 lifts the inner
# brow ends; brow_pinch pulls them toward the midline; curve > 0 turns the mouth corners up; open is the
# lip gap at the mouth centre; sneer lifts one side of the upper lip; wrinkle draws lines on the nose.
_CUES: tuple[dict[str, float], ...] = (
    {"brow_up": -4, "brow_tilt": -8, "brow_pinch": 4, "eye_open": -2.4, "mouth_w": -5, "curve": -1},
    {"brow_up": -4, "brow_tilt": -5, "eye_open": -1.8, "sneer": 8, "wrinkle": 1.2, "curve": -3},
    {"brow_up": 7, "brow_tilt": 6, "brow_pinch": 5, "eye_open": 3.2, "open": 6, "mouth_w": 6},
    {"eye_open": -1.5, "curve": 12, "mouth_w": 4, "open": 5},
    {},
    {"brow_tilt": 7, "eye_open": -1.5, "curve": -11, "mouth_w": -1},
    {"brow_up": 10, "brow_arch": 4, "eye_open": 5.0, "open": 16, "mouth_w": -5},
)
_CUE_NAMES = ("brow_up", "brow_tilt", "brow_pinch", "brow_arch", "eye_open", "mouth_w", "curve", "open",
              "sneer", "wrinkle")


def _fx(*values: float) -> tuple[int, ...]:
    return tuple(round(v * (1 << _SHIFT)) for v in values)


def _poly(points: np.ndarray) -> list[np.ndarray]:
    return [np.round(points * (1 << _SHIFT)).astype(np.int32)]


def _background(rng: np.random.Generator) -> np.ndarray:
    """A face on a flat background would let brightness templates work; clutter breaks that."""
    bg = rng.uniform(20, 235)
    img = np.full((_C, _C), bg, np.uint8)
    for _ in range(rng.integers(2, 7)):
        shade = int(np.clip(bg + rng.uniform(-90, 90), 0, 255))
        p, q = rng.uniform(0, _C, 2), rng.uniform(0, _C, 2)
        kind = rng.integers(3)
        if kind == 0:
            cv2.line(img, _fx(*p), _fx(*q), shade, int(rng.integers(2, 9)), _AA, _SHIFT)
        elif kind == 1:
            cv2.circle(img, _fx(*p), _fx(rng.uniform(5, 25))[0], shade, -1, _AA, _SHIFT)
        else:
            cv2.rectangle(img, _fx(*p), _fx(*q), shade, -1, _AA, _SHIFT)
    return img


def _mouth(img: np.ndarray, cx: float, cy: float, half_w: float, cue: dict[str, float], ink: int,
           inside: int, teeth: int | None, side: int) -> None:
    """One parametric shape covers every mouth, so classes differ in parameters, not in drawing code."""
    t = np.linspace(-1.0, 1.0, 21)  # left corner to right corner
    lift = np.clip(side * t, 0, None)  # > 0 only on the sneering side
    # Curvature bends the corners about a fixed height, so a smile is not just "mouth higher up".
    mid = cy - cue["curve"] * (t**2 - 0.4) - 0.4 * cue["sneer"] * lift
    gap = max(cue["open"], 0.0) * np.sqrt(1 - t**2)
    upper = np.stack([cx + half_w * t, mid - gap / 2 - cue["sneer"] * lift * (1 - t**2) * 2.6], axis=1)
    lower = np.stack([cx + half_w * t, mid + gap / 2], axis=1)
    if (lower[:, 1] - upper[:, 1]).max() < 2.0:
        cv2.polylines(img, _poly(upper), False, ink, 5, _AA, _SHIFT)
        return
    cv2.fillPoly(img, _poly(np.concatenate([upper, lower[::-1]])), inside, _AA, _SHIFT)
    if teeth is not None:
        band = upper.copy()  # teeth fill the top of the opening
        band[:, 1] += 0.45 * (lower[:, 1] - upper[:, 1]).max()
        cv2.fillPoly(img, _poly(np.concatenate([upper, band[::-1]])), teeth, _AA, _SHIFT)
    cv2.polylines(img, _poly(upper), False, ink, 4, _AA, _SHIFT)
    cv2.polylines(img, _poly(lower), False, ink, 4, _AA, _SHIFT)


def _eyes_and_brows(img: np.ndarray, rng: np.random.Generator, cx: float, cy: float, skin: int, ink: int,
                    cue: dict[str, float]) -> float:
    """Both eyes (open, or a line when shut) and their brows, shaped by the expression's cues; the eyes' height."""
    eye_y, eye_dx = cy - 8 + rng.normal(0, 3), rng.uniform(11.5, 16)
    eye_w, eye_h = rng.uniform(6.0, 7.5), max(rng.uniform(3.0, 3.8) + cue["eye_open"], 0.6)
    sclera = int(np.clip(skin + rng.uniform(-10, 50), 0, 255))
    brow_len, brow_y = rng.uniform(10, 13), eye_y - rng.uniform(10, 13)
    brow_thickness = int(rng.integers(5, 8))
    u = np.linspace(0.0, 1.0, 7)  # along a brow, from its inner end (u = 0) to its outer end
    for s in (-1, 1):  # left, right
        ex = cx + s * eye_dx
        if eye_h < 1.5:  # (nearly) shut
            cv2.line(img, _fx(ex - eye_w, eye_y), _fx(ex + eye_w, eye_y), ink, 3, _AA, _SHIFT)
        else:
            cv2.ellipse(img, _fx(ex, eye_y), _fx(eye_w, eye_h), 0, 0, 360, sclera, -1, _AA, _SHIFT)
            cv2.circle(img, _fx(ex, eye_y), _fx(min(eye_h, 3.0))[0], ink, -1, _AA, _SHIFT)
            cv2.ellipse(img, _fx(ex, eye_y), _fx(eye_w, eye_h), 0, 0, 360, ink, 3, _AA, _SHIFT)
        bx = ex - s * (brow_len / 2 + cue["brow_pinch"]) + s * u * (brow_len + cue["brow_pinch"])
        by = brow_y - cue["brow_up"] - cue["brow_tilt"] * (0.5 - u) - (1.5 + cue["brow_arch"]) * 4 * u * (1 - u)
        cv2.polylines(img, _poly(np.stack([bx, by], axis=1)), False, ink, brow_thickness, _AA, _SHIFT)
    return eye_y


def _face(rng: np.random.Generator, label: int) -> np.ndarray:
    """Draws one upright face; sizes and positions are jittered per sample, like different people."""
    img = _background(rng)
    skin = int(rng.uniform(110, 240))
    ink = int(skin * rng.uniform(0.0, 0.25))  # brows, lids, lips: always darker than the skin
    cx, cy = _C / 2 + rng.normal(0, 2), _C / 2 + rng.normal(0, 2)
    fw, fh = rng.uniform(31, 37), rng.uniform(39, 45)
    if rng.random() < 0.7:  # hair frames the head without touching the features
        hair = int(rng.uniform(10, 200))
        cv2.ellipse(img, _fx(cx, cy - 6), _fx(fw + 4, fh + 2), 0, 0, 360, hair, -1, _AA, _SHIFT)
    cv2.ellipse(img, _fx(cx, cy), _fx(fw, fh), 0, 0, 360, skin, -1, _AA, _SHIFT)

    # One expression strength per face, plus a little per-cue wobble so even neutral faces vary.
    intensity = rng.uniform(0.85, 1.2)
    cue = {k: _CUES[label].get(k, 0.0) * intensity + rng.normal(0, 0.3) for k in _CUE_NAMES}

    eye_y = _eyes_and_brows(img, rng, cx, cy, skin, ink, cue)

    nose_y = cy + 8 + rng.normal(0, 1)
    cv2.line(img, _fx(cx, eye_y + 3), _fx(cx + 1, nose_y), ink, 1, _AA, _SHIFT)
    cv2.ellipse(img, _fx(cx, nose_y), _fx(4, 2), 0, 0, 180, ink, 2, _AA, _SHIFT)
    for i in range(int(cue["wrinkle"] * 2.5)):  # disgust: 2-3 lines; anyone else: now and then one
        y = eye_y + 1 + 3 * i
        cv2.line(img, _fx(cx - 3.5, y), _fx(cx + 3.5, y + 0.5), ink, 2, _AA, _SHIFT)

    inside = int(ink + rng.uniform(0, 0.5) * (255 - ink))  # shadow, tongue or teeth: any shade
    teeth = min(skin + 50, 255) if label == CLASSES.index("happy") and rng.random() < 0.6 else None
    if teeth is None and label == CLASSES.index("happy"):
        cue["open"] = min(cue["open"], 1.0)  # a closed smile
    side = 1 if rng.random() < 0.5 else -1  # which side sneers, so flips stay within the class
    mouth_y, half_w = cy + 20 + rng.normal(0, 3), rng.uniform(11, 14) + cue["mouth_w"]
    _mouth(img, cx, mouth_y, half_w, cue, ink, inside, teeth, side)
    return img


def _render(rng: np.random.Generator, label: int, max_rotation: float) -> np.ndarray:
    """Pose, lighting and blur come after drawing so they are independent of the expression."""
    img = _face(rng, label)
    angle = rng.uniform(-max_rotation, max_rotation)
    m = cv2.getRotationMatrix2D((_C / 2, _C / 2), angle, rng.uniform(0.85, 1.15))
    m[:, 2] += rng.uniform(-4 * _SS, 4 * _SS, 2)  # ±4 output pixels
    img = cv2.warpAffine(img, m, (_C, _C), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    theta, ramp = rng.uniform(0, 2 * np.pi), np.linspace(-1, 1, _C, dtype=np.float32)
    light = 1 + rng.uniform(0, 0.35) * (np.cos(theta) * ramp[None, :] + np.sin(theta) * ramp[:, None])
    img = cv2.GaussianBlur(img.astype(np.float32) * light, (0, 0), rng.uniform(0.1, 0.8))
    return cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def generate(n: int, seed: int, *, noise: float = 0.08, max_rotation: float = 15.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Makes a reproducible, balanced, shuffled FER-like split: x uint8 [n, 48, 48], y uint8 [n].

    Each call owns its generator, so the same arguments always give byte-identical arrays, and splits
    made with different seeds are independent draws (use one seed per split). `noise` is the std of
    additive Gaussian noise as a fraction of 255; `max_rotation` is in degrees.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < len(CLASSES):
        raise ValueError(f"n must be an integer >= {len(CLASSES)} (one image per class), got {n!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1] (a fraction of 255), got {noise!r}")
    if not 0.0 <= max_rotation <= 90.0:
        raise ValueError(f"max_rotation must be in [0, 90] degrees, got {max_rotation!r}")
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.uint8)
    x = np.stack([_render(rng, int(label), max_rotation) for label in y])
    x += rng.normal(0.0, noise * 255.0, x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y
