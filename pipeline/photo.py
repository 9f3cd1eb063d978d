"""A photo or camera frame of a handwritten digit -> the model's N x N input, made the way MNIST was.

MNIST's digits were size-normalized to fit a 20x20 box keeping their aspect ratio, antialiased, and
placed in a 28x28 field by their centre of mass; the data stage then downscales 28x28 to N x N. A
photo differs: dark ink on light paper (or chalk on a board), uneven light, a digit that is small and
off-centre, specks, shadows and the frame's edge. preprocess() undoes those differences with OpenCV
(headless): its morphology, connected components and resizes run in C on whole frames, fast enough
for a camera loop, where scikit-image would be several times slower per frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from contract.errors import UserError

Picture = Union[str, Path, bytes, np.ndarray]

WORK_SIDE = 320      # frames are analysed at most this large (speed); the digit is cut from full resolution
MIN_CONTRAST = 24    # grey levels between ink and background below which a frame is blank
BOX, FIELD = 20, 28  # MNIST: the digit fits BOX x BOX, centred by mass in FIELD x FIELD
STROKE_RANGE = (0.11, 0.18)  # MNIST's stroke width / the box's longer side: quartiles 0.12..0.17, median 0.14
CUT = 96             # the digit is binarised and its strokes normalised at this size (longer side)


@dataclass
class Digit:
    """What preprocess() found: the model's input and how it got there."""
    pixels: np.ndarray                     # uint8 [N, N], light digit on black like MNIST
    field28: np.ndarray                    # uint8 [28, 28] before the final downscale
    box: tuple[int, int, int, int]         # the digit's bounding box in the picture (x, y, w, h)
    dark_ink: bool                         # True: the picture had dark ink on a light ground
    notes: list[str] = field(default_factory=list)  # e.g. "2 digits found: took the largest"


def read_grey(picture: Picture, name: str = "picture") -> np.ndarray:
    """PNG/JPEG file or bytes, or an array (grey, RGB, RGBA; any size) -> uint8 grey [H, W]."""
    import cv2

    if isinstance(picture, (str, Path)):
        try:
            data = Path(picture).read_bytes()
        except OSError as e:
            raise UserError(f"{picture}: cannot be read ({e.strerror})") from None
        name = str(picture)
        picture = data
    if isinstance(picture, (bytes, bytearray, memoryview)):
        img = cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_UNCHANGED) if len(picture) else None
        if img is None:
            raise UserError(f"{name}: not an image OpenCV can decode (PNG, JPEG, BMP, WebP, TIFF, ...)")
    else:
        img = np.asarray(picture)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4:
        # transparent pixels (a drawing on a canvas) count as white paper
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        img = (img[:, :, :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim != 2 or min(img.shape) < 8:
        raise UserError(f"{name}: expected a grey or colour picture at least 8x8; got an array of shape {img.shape}")
    if img.dtype != np.uint8:
        if img.dtype.kind == "f" and img.max() <= 1.0:
            img = img * 255.0
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def crop(img: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    if roi is None:
        return img
    x, y, w, h = roi
    H, W = img.shape
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise UserError(f"region of interest {roi} (x, y, w, h) is not inside the {W}x{H} picture")
    return img[y:y + h, x:x + w]


def _polarity(work: np.ndarray) -> tuple[bool, float]:
    """Whether the ink is dark, and the noise level. The background is what a coarse median sees (the digit
    fills less than half of a third of the frame); ink is the side whose deviations are larger and more."""
    import cv2

    tiny = cv2.resize(work, (64, max(8, round(64 * work.shape[0] / work.shape[1]))), interpolation=cv2.INTER_AREA)
    bg = cv2.medianBlur(tiny, (min(tiny.shape) // 3) | 1)
    diff = tiny.astype(np.float32) - bg.astype(np.float32)
    fine = work.astype(np.float32) - cv2.GaussianBlur(work, (5, 5), 0).astype(np.float32)
    noise = 1.4826 * float(np.median(np.abs(fine))) * 1.6  # a 5x5 blur's residual understates the noise
    t = max(MIN_CONTRAST / 2, 3 * noise)
    dark = float(np.clip(-diff - t, 0, None).sum()) >= float(np.clip(diff - t, 0, None).sum())
    return bool(dark), noise


def _ink(img: np.ndarray, dark: bool, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ink strength (uint8, 0 = background) with uneven light flattened, and the background it was measured
    against. The background is a closing (an opening for light ink) wider than any stroke: it removes the
    strokes whatever their width and keeps the light's gradients and a shadow's edge."""
    import cv2

    smooth = cv2.GaussianBlur(img, (5, 5), 0)  # less noise biasing the closing's max
    kern = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    bg = cv2.morphologyEx(smooth, cv2.MORPH_CLOSE if dark else cv2.MORPH_OPEN, kern)
    ink = cv2.subtract(bg, smooth) if dark else cv2.subtract(smooth, bg)
    return ink, bg


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask: across a strip, the distance to the edge averages a quarter of it."""
    import cv2

    dt = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    inside = dt[mask > 0]
    return 4.0 * float(inside.mean()) if inside.size else 0.0


def _normalize_stroke(mask: np.ndarray) -> np.ndarray:
    """Thicken a thin pen's strokes or thin a marker's towards MNIST's (STROKE_RANGE of the box's longer side);
    a 1-pixel pen line would otherwise vanish in the downscale, a marker's fill the loops."""
    import cv2

    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return mask
    side = max(int(np.ptp(ys)), int(np.ptp(xs))) + 1
    w = _stroke_width(mask)
    lo, hi = STROKE_RANGE
    want = min(max(w, lo * side), hi * side)
    r = int(round(abs(want - w) / 2))
    if r == 0:
        return mask
    if want > w:
        return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    # thinning keeps the ridge (distance-transform maxima) so narrower parts of a stroke do not break
    dt = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    ridge = (dt >= cv2.dilate(dt, np.ones((3, 3), np.uint8)) - 0.5) & (dt > 0)
    ridge = cv2.dilate(ridge.astype(np.uint8), np.ones((3, 3), np.uint8))
    return (((dt > r) | (ridge > 0)) & (mask > 0)).astype(np.uint8)


def preprocess(picture: Picture, n: int, roi: tuple[int, int, int, int] | None = None,
               name: str = "picture") -> Digit:
    """A picture of one handwritten digit -> Digit with the model's N x N input (see the module doc).

    Raises UserError for something that is not an image, or a blank frame with no digit in it.
    """
    import cv2

    from pipeline.data import downscale

    img = crop(read_grey(picture, name), roi)
    scale = min(1.0, WORK_SIDE / max(img.shape))
    work = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img
    dark, noise = _polarity(work)
    k = max(15, (min(work.shape) // 4) | 1)
    ink, bg = _ink(work, dark, k)
    floor = max(MIN_CONTRAST, 4 * noise)
    if int(ink.max()) < floor:
        raise UserError(f"{name}: no digit found (a blank frame: no strokes stand out from the background)")
    t, mask = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if t < floor:
        _, mask = cv2.threshold(ink, floor, 255, cv2.THRESH_BINARY)
    count, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    H, W = mask.shape
    comps = []
    for i in range(1, count):
        x, y, w, h, area = stats[i]
        touches = x == 0 or y == 0 or x + w == W or y + h == H
        if touches and (w > 0.9 * W or h > 0.9 * H or area < 0.002 * H * W):
            continue  # the frame's edge, a shadow along it, or a cut-off speck
        comps.append((int(area), i))
    comps.sort(reverse=True)
    if not comps or comps[0][0] < max(6, 0.0005 * H * W):
        raise UserError(f"{name}: no digit found (nothing larger than a speck stands out from the background)")
    notes: list[str] = []
    main = comps[0][1]
    x0, y0, w0, h0 = (int(v) for v in stats[main][:4])
    side = max(w0, h0)
    keep = [main]
    others = 0
    for area, i in comps[1:]:
        x, y, w, h = (int(v) for v in stats[i][:4])
        near = (x < x0 + w0 + 0.3 * side and x + w > x0 - 0.3 * side
                and y < y0 + h0 + 0.3 * side and y + h > y0 - 0.3 * side)
        if near and area >= 0.02 * comps[0][0]:
            keep.append(i)  # a broken stroke of the same digit (the bar of a 5, a gap in a 4)
        elif area >= 0.3 * comps[0][0] and max(w, h) >= 0.4 * side:
            others += 1
    if others:
        notes.append(f"{others + 1} digits found: took the largest")
    sel = np.isin(labels, keep)
    ys, xs = np.nonzero(sel)
    bx, by = int(xs.min()), int(ys.min())
    bw, bh = int(xs.max()) + 1 - bx, int(ys.max()) + 1 - by
    # Cut the digit from full resolution (a thin line survives there), with a margin for the antialiased edge
    m = 2
    cx0, cy0 = max(0, bx - m), max(0, by - m)
    cx1, cy1 = min(W, bx + bw + m), min(H, by + bh + m)
    fx0, fy0 = int(cx0 / scale), int(cy0 / scale)
    fx1, fy1 = min(img.shape[1], int(np.ceil(cx1 / scale))), min(img.shape[0], int(np.ceil(cy1 / scale)))
    # at a canonical size: the stroke arithmetic below is the same for a small and a large digit
    f = CUT / max(fx1 - fx0, fy1 - fy0)
    size = (max(1, round((fx1 - fx0) * f)), max(1, round((fy1 - fy0) * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    grey = cv2.resize(img[fy0:fy1, fx0:fx1], size, interpolation=interp)
    back = cv2.resize(bg[cy0:cy1, cx0:cx1], size, interpolation=cv2.INTER_LINEAR)
    grey = cv2.GaussianBlur(grey, (3, 3), 0)
    cut = cv2.subtract(back, grey) if dark else cv2.subtract(grey, back)
    keepmask = cv2.resize(sel[cy0:cy1, cx0:cx1].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    keepmask = cv2.dilate(keepmask, np.ones((5, 5), np.uint8))
    thr = max(t if t >= floor else floor, 1) * 0.8
    # the local Otsu level, where it is clear of the noise: the digit's own contrast (not the frame's)
    lt, _ = cv2.threshold(cut[keepmask > 0], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(floor, min(thr, lt)) if lt >= floor else thr
    strokes = ((cut > thr) & (keepmask > 0)).astype(np.uint8)
    if not strokes.any():
        strokes = keepmask
    strokes = _normalize_stroke(strokes)
    ys, xs = np.nonzero(strokes)
    digit = strokes[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) * 255.0
    field28 = place(digit)
    box = tuple(int(round(v / scale)) for v in (bx, by, bw, bh))
    if roi is not None:
        box = (box[0] + roi[0], box[1] + roi[1], box[2], box[3])
    return Digit(pixels=downscale(field28[None], n)[0], field28=field28, box=box, dark_ink=dark, notes=notes)


def place(digit: np.ndarray) -> np.ndarray:
    """Float ink [h, w] (0..255) -> uint8 [28, 28]: fit 20x20 keeping the aspect ratio, centre of mass at the middle."""
    import cv2

    h, w = digit.shape
    f = BOX / max(h, w)
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    small = np.clip(cv2.resize(digit, (nw, nh), interpolation=interp), 0, 255)
    mass = small.sum()
    cy = (small.sum(axis=1) @ np.arange(nh)) / mass if mass else nh / 2
    cx = (small.sum(axis=0) @ np.arange(nw)) / mass if mass else nw / 2
    ox = int(round(FIELD / 2 - 0.5 - cx))
    oy = int(round(FIELD / 2 - 0.5 - cy))
    ox, oy = min(max(ox, 0), FIELD - nw), min(max(oy, 0), FIELD - nh)
    out = np.zeros((FIELD, FIELD), np.float32)
    out[oy:oy + nh, ox:ox + nw] = small
    return np.round(out).astype(np.uint8)
