"""pipeline.photo.preprocess on photo-like pictures the tests render themselves (pipeline.fake_photo).

A preprocessed picture is judged against the clean MNIST digit it was drawn from, downscaled the data stage's
way: the correlation of the two N x N inputs, and whether the nearest clean digit (of those rendered) has the
picture's label. No model is trained; the bounds were measured (LEAST) and set with margin.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contract.errors import UserError
from pipeline import fake_photo
from pipeline.photo import Digit, preprocess, read_grey

from ..conftest import ROOT

N = 16
COUNT = 12          # the first 12 MNIST test digits, in each condition
# The least mean correlation with the clean digit: measured 0.85-0.91, rotation 0.78 (the clean digit is upright),
# a thin pen 0.74 and mixed 0.78 (both can break a stroke); before stroke normalisation thick was under 0.65.
LEAST = {"rotation": 0.70, "thin": 0.66, "mixed": 0.70}


def synthetic(kind: str) -> np.ndarray:
    """A 28x28 MNIST-like digit drawn here (no MNIST needed): '0' a ring, '1' a bar, '7' two strokes."""
    import cv2

    d = np.zeros((28, 28), np.uint8)
    if kind == "0":
        cv2.ellipse(d, (14, 14), (6, 9), 0, 0, 360, 255, 2, cv2.LINE_AA)
    elif kind == "1":
        cv2.line(d, (14, 4), (14, 23), 255, 3, cv2.LINE_AA)
    else:
        cv2.line(d, (8, 6), (20, 6), 255, 3, cv2.LINE_AA)
        cv2.line(d, (20, 6), (12, 23), 255, 3, cv2.LINE_AA)
    return d


def _z(v: np.ndarray) -> np.ndarray:
    v = v.reshape(len(v), -1).astype(np.float64)
    v = v - v.mean(1, keepdims=True)
    return v / np.maximum(v.std(1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def mnist12():
    from pipeline.data import downscale, load_originals

    _, a = load_originals(None, ROOT, False)
    images, labels = a["test_images"][:COUNT], a["test_labels"][:COUNT].astype(int)
    return images, labels, downscale(images, N)


@pytest.mark.mnist
@pytest.mark.parametrize("condition", fake_photo.CONDITIONS)
def test_photo_of_a_digit_comes_out_close_to_the_clean_digit(mnist12, condition):
    images, labels, clean = mnist12
    rng = np.random.default_rng(1)
    got = np.stack([preprocess(fake_photo.render(im, rng, condition), N).pixels for im in images])
    assert got.shape == clean.shape and got.dtype == np.uint8
    corr = _z(got) @ _z(clean).T / (N * N)
    own = np.diag(corr)
    nearest = labels[corr.argmax(1)] == labels
    assert own.mean() > LEAST.get(condition, 0.78), f"{condition}: correlation with the clean digit {np.round(own, 2)}"
    assert nearest.sum() >= COUNT - 2, f"{condition}: nearest clean digit has another label for {labels[~nearest]}"


@pytest.mark.mnist
def test_board_chalk_is_light_ink_and_paper_dark_ink(mnist12):
    images = mnist12[0]
    rng = np.random.default_rng(2)
    assert not preprocess(fake_photo.render(images[0], rng, "board"), N).dark_ink
    assert preprocess(fake_photo.render(images[0], rng, "plain"), N).dark_ink


def test_blank_frame_is_no_digit():
    rng = np.random.default_rng(3)
    for board in (False, True):
        with pytest.raises(UserError, match="no digit found"):
            preprocess(fake_photo.blank_frame(rng, board=board), N, name="frame.png")


def test_two_digits_takes_the_larger_with_a_note():
    rng = np.random.default_rng(4)
    frame = fake_photo.two_digits(synthetic("7"), synthetic("0"), rng, ratio=0.6)
    d = preprocess(frame, N)
    assert d.notes == ["2 digits found: took the largest"]
    x, y, w, h = d.box
    assert h > 100  # the big 7's box is 150 px tall in the frame; the small 0's 90
    one = preprocess(fake_photo.render(synthetic("7"), np.random.default_rng(5), "plain"), N)
    assert one.notes == []


def test_not_an_image_names_it(tmp_path: Path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a picture")
    with pytest.raises(UserError, match="notes.txt: not an image"):
        preprocess(bad, N)
    with pytest.raises(UserError, match="upload: not an image"):
        preprocess(b"\x00\x01garbage", N, name="upload")
    with pytest.raises(UserError, match="missing.png: cannot be read"):
        preprocess(tmp_path / "missing.png", N)
    with pytest.raises(UserError, match="at least 8x8"):
        preprocess(np.zeros((4, 4), np.uint8), N)


def test_every_picture_form_is_accepted_alike(tmp_path: Path):
    import cv2

    bgr = fake_photo.render(synthetic("7"), np.random.default_rng(6), "plain")
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    rgba = np.dstack([bgr, np.full(grey.shape, 255, np.uint8)])
    png, jpg = fake_photo.encode(bgr, ".png"), fake_photo.encode(bgr, ".jpg")
    path = tmp_path / "digit.png"
    path.write_bytes(png)
    forms = {"bgr": bgr, "grey": grey, "grey3d": grey[:, :, None], "rgba": rgba, "float": grey / 255.0,
             "png": png, "jpeg": jpg, "path": path, "str": str(path)}
    ref = preprocess(grey, N).pixels.astype(int)
    for name, form in forms.items():
        d = preprocess(form, N)
        assert isinstance(d, Digit) and d.pixels.shape == (N, N) and d.field28.shape == (28, 28), name
        assert np.abs(d.pixels.astype(int) - ref).mean() < 6, name  # JPEG and colour weights move a few levels
    assert read_grey(rgba).shape == grey.shape


def test_transparent_canvas_counts_as_paper():
    d = np.zeros((200, 200, 4), np.uint8)
    d[60:140, 95:105] = (0, 0, 0, 255)  # a black bar drawn on a transparent canvas
    assert preprocess(d, N).dark_ink


def test_roi_picks_the_digit_inside_it_and_a_bad_roi_errors():
    rng = np.random.default_rng(7)
    frame = fake_photo.two_digits(synthetic("1"), synthetic("0"), rng, ratio=0.9)
    whole = preprocess(frame, N)
    x, y, w, h = whole.box
    roi = (max(0, x - 40), max(0, y - 40), w + 80, h + 80)
    d = preprocess(frame, N, roi=roi)
    assert d.notes == []
    assert d.box[0] >= roi[0] and d.box[0] + d.box[2] <= roi[0] + roi[2]  # in the picture's coordinates
    assert abs(d.box[0] - x) <= 2 and abs(d.box[1] - y) <= 2
    for bad in [(0, 0, 0, 10), (-1, 0, 10, 10), (600, 400, 100, 100)]:
        with pytest.raises(UserError, match="region of interest"):
            preprocess(frame, N, roi=bad)


@pytest.mark.parametrize("n", [8, 16, 28])
def test_output_size_follows_n(n):
    d = preprocess(fake_photo.render(synthetic("0"), np.random.default_rng(8), "plain"), n)
    assert d.pixels.shape == (n, n) and d.pixels.max() > 128 and d.pixels[0].max() < 64


def test_fake_photos_are_deterministic():
    a = fake_photo.render(synthetic("7"), np.random.default_rng(9), "mixed")
    b = fake_photo.render(synthetic("7"), np.random.default_rng(9), "mixed")
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    with pytest.raises(ValueError, match="unknown condition"):
        fake_photo.sample(np.random.default_rng(0), "fog")
