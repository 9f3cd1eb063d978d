"""Classify pictures, MNIST test images or a camera's frames on the host, in the emulator or on a board.

    python -m pipeline.send --host artifacts/runs/default photo.jpg 3 17      # the run's C library, no firmware
    python -m pipeline.send --emulator artifacts/runs/tiny/firmware 0 1 2     # serial-mode firmware, emulated
    python -m pipeline.send --port /dev/ttyUSB0 --camera 0                    # camera -> board (-> 7-segment)

Where (pipeline/backends.py; one of): `--host RUN_DIR` runs the run's library stage (the C engine built for
the host); `--emulator FW_OR_RUN_DIR` runs its serial-mode firmware under the emulator (`--target` to emulate
another chip); `--port [PORT]` talks to a board running that firmware. With none of them (or `--port`
without PORT): the board on the first /dev/ttyUSB* or /dev/ttyACM* (this command reads no config).

What: an integer is that MNIST test image (checksummed originals, found as the data stage finds them,
downscaled like it); anything else is a picture file (PNG, JPEG, ...), which pipeline/photo.py turns into
the model's N x N input the way MNIST was made (ink polarity, uneven light, the digit cut out, fitted to
20x20 and centred by mass in 28x28). `--raw` instead converts it to grey and downscales it like the data
stage (padded to a square with its corner pixel's value; `--invert` for dark ink on light paper).
`--roi X,Y,W,H` looks only at that region. `--camera [INDEX|VIDEO_FILE]` classifies an OpenCV capture
frame by frame (`--every N`, `--fps F`, `--frames N`) and ends with the frames per second it measured.

Each answer prints the class, the ten logits and, from firmware, the cycles the chip counted with the
milliseconds they take at the chip's clock.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from contract.chips import CHIPS, RISCV_NAMES
from contract.errors import UserError
from pipeline import backends
from pipeline.backends import Answer, Backend

Roi = tuple[int, int, int, int]


# ---- what is sent ----------------------------------------------------------------------------------------------

def to_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    if h == w:
        return img
    n = max(h, w)
    out = np.full((n, n), img[0, 0], dtype=np.uint8)
    out[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = img
    return out


def load_png(path: Path, n: int, invert: bool = False, roi: Roi | None = None) -> np.ndarray:
    """--raw: a picture converted to grey and downscaled to N x N like the data stage (no digit finding)."""
    from PIL import Image

    from pipeline.data import downscale
    from pipeline.photo import crop

    try:
        img = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as an image ({e})") from None
    img = crop(img, roi)
    if invert:
        img = 255 - img
    return downscale(to_square(img)[None], n)[0]


def mnist_test(indices: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images (downscaled to n like the data stage) and their labels."""
    from pipeline.data import downscale, load_originals
    from pipeline.stage import ROOT

    _, arrays = load_originals(None, ROOT, False)
    bad = [i for i in indices if not 0 <= i < len(arrays["test_labels"])]
    if bad:
        raise UserError(f"MNIST test indices {bad} out of range (0 to {len(arrays['test_labels']) - 1})")
    return downscale(arrays["test_images"][indices], n), arrays["test_labels"][indices]


def parse_roi(text: str) -> Roi:
    """--roi X,Y,W,H: four integers, X and Y >= 0, W and H > 0 (inside the picture is checked on use)."""
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected X,Y,W,H, four integers (pixels)") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: X and Y must be >= 0, W and H > 0")
    return x, y, w, h


# ---- what comes back -------------------------------------------------------------------------------------------

def describe(ans: Answer) -> str:
    text = f"class {ans.cls}, logits {list(ans.logits)}"
    if ans.cycles is not None:
        clock = CHIPS[ans.target].clock_hz if ans.target in CHIPS else None
        ms = f" = {1000 * ans.cycles / clock:.3f} ms at {clock / 1e6:g} MHz" if clock else ""
        text += f", {ans.cycles} cycles{ms}"
    return text


def header(backend: Backend) -> str:
    if backend.name == "host":
        return (f"host: C library {backend.where}, {backend.image_size}x{backend.image_size} images, "
                f"{backend.num_classes} classes")
    return (f"firmware: {backend.target}, {backend.image_size}x{backend.image_size} images, "
            f"{backend.num_classes} classes ({backend.name})")


# ---- the two loops ---------------------------------------------------------------------------------------------

def send(backend: Backend, items: list[str], raw: bool = False, invert: bool = False, roi: Roi | None = None,
         out: TextIO | None = None) -> list[Answer]:
    """One answer per item (MNIST test index or picture file); prints a line per answer and returns them."""
    from pipeline.photo import preprocess

    out = out or sys.stdout
    n = backend.image_size
    for item in items:
        if item.startswith("-") and item[1:].isdigit():
            raise UserError(f"MNIST test index {item} is out of range (0 to 9999)")
    idx = [int(i) for i in items if i.isdigit()]
    mnist = dict(zip(idx, zip(*mnist_test(idx, n)))) if idx else {}
    answers = []
    for item in items:
        notes: list[str] = []
        if item.isdigit():
            img, label = mnist[int(item)]
            what = f"mnist {item} (label {label})"
        elif raw:
            img, what = load_png(Path(item), n, invert, roi), item
        else:
            digit = preprocess(Path(item), n, roi, name=item)
            img, what, notes = digit.pixels, item, digit.notes
        ans = backend.infer(img)
        answers.append(ans)
        print(f"{what}: {describe(ans)}" + "".join(f"; {note}" for note in notes), file=out)
    return answers


def open_capture(source: str):
    """--camera's argument: a camera index (0, 1, ...) or a video file, opened with OpenCV."""
    import cv2

    if source.isdigit():
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its warnings say less than ours
        try:
            cap = cv2.VideoCapture(int(source))
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not cap.isOpened():
            raise UserError(f"camera {source} cannot be opened: is a camera connected (ls /dev/video*) and "
                            "free, and may this user read it (group video)? Or give a video file")
        return cap
    if not Path(source).is_file():
        raise UserError(f"{source}: no such video file (--camera takes a camera index such as 0 or a video file)")
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise UserError(f"{source}: OpenCV cannot read it as a video")
    return cap


def camera(backend: Backend, cap, live: bool = False, every: int = 1, fps: float | None = None,
           frames: int | None = None, roi: Roi | None = None, out: TextIO | None = None) -> dict:
    """Classify an opened capture's frames (every `every`-th, at most `fps` a second, `frames` in all; `live`:
    a camera, whose frames in between are dropped rather than waited for); prints a line each.

    Returns the summary it prints: frames read and classified, those with no digit, and frames/s
    (preprocessing + inference, from the second frame on: the first pays OpenCV's start-up; and the whole
    loop with capture and printing).
    """
    from pipeline.photo import crop, preprocess

    out = out or sys.stdout
    read = done = blank = 0
    busy = []                        # seconds in preprocessing + inference, per frame
    start = last = time.perf_counter()
    try:
        while frames is None or done < frames:
            if fps and done:
                wait = last + 1.0 / fps - time.perf_counter()
                while live and wait > 0 and cap.grab():  # a camera: drop the frames in between
                    read += 1
                    wait = last + 1.0 / fps - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)                     # a file: play it at that rate
            ok, frame = cap.read()
            if not ok:
                break
            read += 1
            if (read - 1) % every:
                continue
            crop(frame[:, :, 0] if frame.ndim == 3 else frame, roi)  # a region outside the frame: an error
            last = t0 = time.perf_counter()
            try:
                digit = preprocess(frame, backend.image_size, roi, name=f"frame {read - 1}")
            except UserError:
                busy.append(time.perf_counter() - t0)
                done += 1
                blank += 1
                print(f"frame {read - 1}: no digit", file=out, flush=True)
                continue
            ans = backend.infer(digit.pixels)
            busy.append(time.perf_counter() - t0)
            done += 1
            print(f"frame {read - 1}: {describe(ans)}" + "".join(f"; {n}" for n in digit.notes), file=out,
                  flush=True)
    except KeyboardInterrupt:
        print("stopped (Ctrl-C)", file=out)
    finally:
        cap.release()
    wall = time.perf_counter() - start
    steady = busy[1:] or busy        # the first frame pays OpenCV's start-up
    summary = {"read": read, "classified": done - blank, "no_digit": blank,
               "fps": len(steady) / sum(steady) if sum(steady) else 0.0, "fps_loop": done / wall if wall else 0.0}
    print(f"{done} frames ({summary['no_digit']} with no digit) of {read} read: {summary['fps']:.1f} frames/s "
          f"preprocessing + inference, {summary['fps_loop']:.1f} frames/s with capture and printing", file=out)
    return summary


# ---- command line ----------------------------------------------------------------------------------------------

def positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = 0
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number above 0")
        return v
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.send", description=__doc__.split("\n\n")[0],
                                 epilog="default backend: the board on the first /dev/ttyUSB* or /dev/ttyACM*")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--port", nargs="?", const="", metavar="PORT",
                       help="a board running serial-mode firmware (no PORT: the first /dev/ttyUSB* or /dev/ttyACM*)")
    where.add_argument("--emulator", type=Path, metavar="FW_OR_RUN_DIR",
                       help="serial-mode firmware in the emulator: a run folder, its firmware stage folder, or "
                       "firmware.elf (with --target)")
    where.add_argument("--host", type=Path, metavar="RUN_DIR",
                       help="the run's C library on this machine (a run folder such as artifacts/runs/default)")
    ap.add_argument("--target", choices=RISCV_NAMES, help="emulated chip (default: the firmware stage's)")
    ap.add_argument("--raw", action="store_true",
                    help="pictures: plain grey downscale like the data stage instead of finding the digit")
    ap.add_argument("--invert", action="store_true", help="with --raw: invert (dark digit on a light background)")
    ap.add_argument("--roi", type=parse_roi, metavar="X,Y,W,H", help="look only at this region of each picture")
    ap.add_argument("--camera", nargs="?", const="0", metavar="INDEX|VIDEO_FILE",
                    help="classify a camera's (default 0) or a video file's frames, live")
    ap.add_argument("--every", type=positive(int), default=1, metavar="N", help="--camera: every N-th frame")
    ap.add_argument("--fps", type=positive(float), metavar="F", help="--camera: at most F frames a second")
    ap.add_argument("--frames", type=positive(int), metavar="N", help="--camera: stop after N frames")
    ap.add_argument("items", nargs="*", help="picture files and/or MNIST test indices")
    args = ap.parse_args(argv)
    if (args.camera is None) == (not args.items):
        ap.error("give pictures and/or MNIST test indices, or --camera, not both" if args.items
                 else "give pictures and/or MNIST test indices, or --camera")
    if args.invert and not args.raw:
        ap.error("--invert goes with --raw (without it the ink's polarity is found in the picture)")
    if args.raw and args.camera is not None:
        ap.error("--raw is for picture files; --camera frames always go through preprocessing")
    if args.target and args.emulator is None:
        ap.error("--target goes with --emulator")
    try:
        cap = open_capture(args.camera) if args.camera is not None else None  # before a board is opened
        if args.host is not None:
            backend: Backend = backends.host(args.host)
        elif args.emulator is not None:
            backend = backends.emulator(args.emulator, args.target)
        else:
            backend = backends.board(args.port or None)
        print(header(backend))
        if cap is not None:
            camera(backend, cap, args.camera.isdigit(), args.every, args.fps, args.frames, args.roi)
        else:
            send(backend, args.items, args.raw, args.invert, args.roi)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
