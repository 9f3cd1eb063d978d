"""Photo-like pictures of MNIST digits, for testing and benchmarking pipeline.photo without a camera.

render() draws one 28x28 MNIST digit as a pen stroke on paper (or chalk on a board) in a 640x480 frame:
small and off-centre, rotated, thin or thick strokes, uneven light and a soft shadow, camera blur, sensor
noise, specks and JPEG compression. Everything is drawn from a numpy Generator, so a seed gives the same
pictures; each picture is whole-array OpenCV/numpy work (no per-pixel Python). numpy and OpenCV only (no
torch): tests, benchmarks and video writers import it cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

W, H = 640, 480

# The named conditions: each strengthens one difference from MNIST over a mild baseline; "mixed" draws them all.
CONDITIONS = ("plain", "small", "uneven_light", "shadow", "blur", "noise", "jpeg", "rotation", "thin", "thick",
              "board", "specks", "mixed")


@dataclass(frozen=True)
class Conditions:
    """How one picture is drawn (sample() draws these from a condition name)."""
    height: float = 160.0          # the digit's 20-pixel MNIST box, in frame pixels
    centre: tuple[float, float] = (0.5, 0.5)  # where the digit sits, as fractions of the frame
    angle: float = 0.0             # rotation in degrees (counter-clockwise)
    stroke: float = 1.0            # stroke width relative to the digit's own (0.35 thin pen .. 2 marker)
    board: bool = False            # light chalk on a dark board instead of dark ink on paper
    paper: float = 210.0           # background grey level under full light
    ink: float = 40.0              # ink (or chalk) grey level under full light
    gradient: float = 0.1          # light falls off by this fraction across the frame
    shadow: float = 0.0            # a soft shadow darkens part of the frame by this fraction
    blur: float = 0.6              # Gaussian blur sigma in frame pixels (focus, motion)
    noise: float = 2.0             # sensor noise sigma in grey levels
    jpeg: int = 92                 # JPEG quality (0: none)
    specks: int = 0                # small dark (light on a board) dots scattered over the frame


def sample(rng: np.random.Generator, condition: str = "mixed") -> Conditions:
    """Conditions for one picture: a mild baseline with `condition` (one of CONDITIONS) made strong."""
    u = rng.uniform
    c = Conditions(height=u(110, 240), centre=(u(0.3, 0.7), u(0.3, 0.7)), angle=u(-4, 4), stroke=u(0.8, 1.25),
                   paper=u(180, 235), ink=u(15, 70), gradient=u(0.0, 0.2), blur=u(0.3, 1.0), noise=u(1, 3),
                   jpeg=int(rng.integers(85, 96)))
    strong = {
        "small": lambda: dict(height=u(50, 90), centre=(u(0.12, 0.88), u(0.15, 0.85))),
        "uneven_light": lambda: dict(gradient=u(0.35, 0.6)),
        "shadow": lambda: dict(shadow=u(0.3, 0.55)),
        "blur": lambda: dict(blur=u(2.0, 4.0)),
        "noise": lambda: dict(noise=u(8, 16)),
        "jpeg": lambda: dict(jpeg=int(rng.integers(15, 35))),
        "rotation": lambda: dict(angle=float(rng.choice([-1, 1])) * u(8, 15)),
        "thin": lambda: dict(stroke=u(0.3, 0.45)),
        "thick": lambda: dict(stroke=u(1.6, 2.1)),
        "board": lambda: dict(board=True, paper=u(30, 70), ink=u(170, 230)),
        "specks": lambda: dict(specks=int(rng.integers(15, 60))),
    }
    if condition == "plain":
        return c
    if condition == "mixed":
        out = {}
        for name in strong:
            if rng.random() < 0.3:
                out.update(strong[name]())
        return replace(c, **out)
    if condition not in strong:
        raise ValueError(f"unknown condition {condition!r}; one of {', '.join(CONDITIONS)}")
    return replace(c, **strong[condition]())


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask: for a strip, the distance to the edge averages a quarter of it."""
    import cv2

    dt = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    inside = dt[mask > 0]
    return 4.0 * float(inside.mean()) if inside.size else 0.0


def thin(mask: np.ndarray, r: float) -> np.ndarray:
    """A pen's line along a binary stroke mask: its ridge (distance-transform maxima) drawn `r` pixels narrower
    on each side than the stroke's mean width, at least 1 pixel, evenly wide as a pen draws."""
    import cv2

    dt = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    ridge = ((dt >= cv2.dilate(dt, np.ones((3, 3), np.uint8)) - 0.5) & (dt > 0)).astype(np.uint8)
    half = max(0, int(round(_stroke_width(mask) / 2 - r)))
    pen = cv2.dilate(ridge, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * half + 1, 2 * half + 1)))
    return pen & mask


def ink_mask(digit28: np.ndarray, c: Conditions) -> np.ndarray:
    """The digit as float32 ink coverage (0..1) in a square patch, rotated, strokes thinned or thickened."""
    import cv2

    s = max(8, int(round(c.height * 28 / 20)))   # the 28x28 field at frame scale
    big = cv2.resize(digit28.astype(np.uint8), (s, s), interpolation=cv2.INTER_CUBIC)
    big = cv2.GaussianBlur(big, (0, 0), s / 56)   # smooth MNIST's pixel steps before cutting a crisp pen line
    mask = (big > 110).astype(np.uint8)
    if c.stroke != 1.0:
        width = _stroke_width(mask)
        r = int(round(abs(c.stroke - 1.0) * width / 2))
        if r and c.stroke > 1:
            mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        elif r:
            mask = thin(mask, r)
    pad = s // 4
    cov = cv2.copyMakeBorder(mask.astype(np.float32), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    cov = cv2.GaussianBlur(cov, (0, 0), 0.7)      # antialiased edge of a real line
    m = cv2.getRotationMatrix2D(((cov.shape[1] - 1) / 2, (cov.shape[0] - 1) / 2), c.angle, 1.0)
    return cv2.warpAffine(cov, m, cov.shape[::-1], flags=cv2.INTER_LINEAR, borderValue=0)


def _paste(cover: np.ndarray, patch: np.ndarray, cx: float, cy: float) -> None:
    """Add `patch` into `cover` (max), centred at (cx, cy) in pixels, clipped at the frame's edges."""
    ph, pw = patch.shape
    x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(cover.shape[1], x0 + pw), min(cover.shape[0], y0 + ph)
    if fx1 > fx0 and fy1 > fy0:
        sub = cover[fy0:fy1, fx0:fx1]
        np.maximum(sub, patch[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0], out=sub)


def _light(rng: np.random.Generator, c: Conditions) -> np.ndarray:
    """Illumination (0..1] over the frame: a linear fall-off in a random direction and a soft shadow."""
    import cv2

    h, w = H // 8, W // 8  # light varies slowly: drawn at 1/8 scale, then enlarged
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(a) * (xx / w - 0.5) + np.sin(a) * (yy / h - 0.5)) + 0.5  # 0..1 across the frame, roughly
    light = 1.0 - c.gradient * np.clip(ramp, 0, 1)
    if c.shadow:
        # a hand or phone's shadow: a blurred half-plane edge with a random slant
        b = rng.uniform(0, 2 * np.pi)
        off = rng.uniform(-0.25, 0.25)
        side = (np.cos(b) * (xx / w - 0.5) + np.sin(b) * (yy / h - 0.5)) > off
        soft = cv2.GaussianBlur(side.astype(np.float32), (0, 0), rng.uniform(15, 40) / 8)
        light = light * (1.0 - c.shadow * soft)
    return cv2.resize(light.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)


def _specks(rng: np.random.Generator, count: int) -> np.ndarray:
    import cv2

    cover = np.zeros((H, W), np.float32)
    for x, y, r in zip(rng.integers(0, W, count), rng.integers(0, H, count), rng.integers(1, 4, count)):
        cv2.circle(cover, (int(x), int(y)), int(r), 1.0, -1, lineType=cv2.LINE_AA)
    return cover


def finish(cover: np.ndarray, rng: np.random.Generator, c: Conditions, colour: bool = True) -> np.ndarray:
    """Ink coverage [H, W] (0..1) -> a camera's uint8 BGR frame under conditions `c`."""
    import cv2

    if c.specks:
        np.maximum(cover, _specks(rng, c.specks), out=cover)
    base = c.paper + (c.ink - c.paper) * cover
    if c.board:  # chalk is patchy: some of the board shows through the stroke
        base = base - (c.ink - c.paper) * cover * 0.35 * rng.random(cover.shape, dtype=np.float32)
    img = base * _light(rng, c)
    if c.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), c.blur)
    if colour:  # a slight colour cast of paper and light, as cameras give
        img = img[:, :, None] * np.array(rng.uniform(0.9, 1.05, 3), np.float32)[None, None, :]
    img = img + c.noise * rng.standard_normal(img.shape, dtype=np.float32)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if c.jpeg:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(c.jpeg)])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def render(digit28: np.ndarray, rng: np.random.Generator, conditions: Conditions | str = "mixed",
           colour: bool = True) -> np.ndarray:
    """One MNIST digit (uint8 [28, 28], light on black) -> a photo-like uint8 BGR frame [480, 640, 3]
    (grey [480, 640] with colour=False). `conditions` is a Conditions or a condition name for sample()."""
    c = sample(rng, conditions) if isinstance(conditions, str) else conditions
    patch = ink_mask(np.asarray(digit28), c)
    cover = np.zeros((H, W), np.float32)
    _paste(cover, patch, c.centre[0] * W, c.centre[1] * H)
    return finish(cover, rng, c, colour)


def two_digits(big28: np.ndarray, small28: np.ndarray, rng: np.random.Generator, ratio: float = 0.6,
               colour: bool = True) -> np.ndarray:
    """Two digits side by side, the second `ratio` times the size of the first (left or right at random)."""
    c = replace(sample(rng, "plain"), height=150.0, angle=0.0)
    left = rng.random() < 0.5
    cover = np.zeros((H, W), np.float32)
    _paste(cover, ink_mask(np.asarray(big28), c), W * (0.3 if left else 0.7), H * 0.5)
    _paste(cover, ink_mask(np.asarray(small28), replace(c, height=c.height * ratio)), W * (0.7 if left else 0.3),
           H * 0.5)
    return finish(cover, rng, c, colour)


def blank_frame(rng: np.random.Generator, board: bool = False, colour: bool = True) -> np.ndarray:
    """Paper (or a board) with uneven light, a shadow, noise and JPEG, and no digit."""
    c = sample(rng, "board" if board else "plain")
    c = replace(c, gradient=0.4, shadow=0.3, noise=4.0, jpeg=60)
    return finish(np.zeros((H, W), np.float32), rng, c, colour)


def encode(frame: np.ndarray, ext: str = ".png") -> bytes:
    """A frame as PNG/JPEG file bytes."""
    import cv2

    ok, buf = cv2.imencode(ext, frame)
    if not ok:
        raise ValueError(f"cannot encode a frame of shape {frame.shape} as {ext}")
    return buf.tobytes()
