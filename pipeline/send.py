"""Send images to serial-mode firmware, on a board or in the emulator, and print its answers.

    python -m pipeline.send --port /dev/ttyUSB0 digit.png 3 17          # PNG files and MNIST test indices
    python -m pipeline.send --emulator artifacts/runs/tiny/firmware 0 1 2

It first PINGs the firmware to learn the model's image size N, then sends each item as an IMAGE
frame: a PNG is converted to 8-bit grayscale and downscaled to N x N exactly as pipeline/data.py
downscales MNIST (PIL's antialiased bilinear resize; a non-square image is first padded to a square
with the background, the corner pixel's value); an integer is that MNIST test image (checksummed
originals, found as the data stage finds them). --invert turns dark-on-light drawings into MNIST's
light-on-dark. Prints one line per item: class, cycles, logits, and the label of an MNIST image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image

from contract.chips import CHIP_NAMES
from contract.errors import UserError
from mcu import protocol
from mcu.protocol import Message
from pipeline.backends import EmulatorLink, Link, SerialLink, emulator_args


def to_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    if h == w:
        return img
    n = max(h, w)
    out = np.full((n, n), img[0, 0], dtype=np.uint8)
    out[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = img
    return out


def load_png(path: Path, n: int, invert: bool = False) -> np.ndarray:
    """A picture as the model's N x N uint8 input (see the module docstring)."""
    from pipeline.data import downscale

    try:
        img = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as an image ({e})") from None
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


def send(link: Link, items: list[str], invert: bool = False, out: TextIO | None = None) -> list[Message]:
    """PING, then one IMAGE per item; prints a line per answer to out (default stdout) and returns them."""
    out = out or sys.stdout
    pong = link.exchange(protocol.ping_frame())
    if not isinstance(pong, protocol.Pong):
        raise UserError(f"the firmware did not answer PING with PONG but with {pong}: is it serial-mode firmware?")
    print(f"firmware: {pong.target}, {pong.image_size}x{pong.image_size} images, {pong.num_classes} classes",
          file=out)
    for item in items:
        if item.lstrip("-").isdigit() and item.startswith("-"):
            raise UserError(f"MNIST test index {item} is out of range (0 to 9999)")
    idx = [int(i) for i in items if i.isdigit()]
    mnist = dict(zip(idx, zip(*mnist_test(idx, pong.image_size)))) if idx else {}
    answers = []
    for item in items:
        if item.isdigit():
            img, label = mnist[int(item)]
            what = f"mnist {item} (label {label})"
        else:
            img, what = load_png(Path(item), pong.image_size, invert), item
        ans = link.exchange(protocol.image_frame(img))
        answers.append(ans)
        if isinstance(ans, protocol.Result):
            print(f"{what}: class {ans.cls}, {ans.cycles} cycles, logits {list(ans.logits)}", file=out)
        else:
            print(f"{what}: {ans}", file=out)
    return answers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.send", description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--port", help="serial port of the board (default: mcu.monitor's choice)")
    where.add_argument("--emulator", type=Path, help="firmware stage folder, or firmware.elf (with --target)")
    ap.add_argument("--target", choices=CHIP_NAMES, help="emulated chip (default: the stage's)")
    ap.add_argument("--invert", action="store_true", help="invert PNGs (dark digit on a light background)")
    ap.add_argument("items", nargs="+", help="PNG files and/or MNIST test indices")
    args = ap.parse_args(argv)
    try:
        if args.emulator is not None:
            link: Link = EmulatorLink(*emulator_args(args.emulator, args.target))
        else:
            from mcu.monitor import find_port

            link = SerialLink(find_port(args.port))
        send(link, args.items, args.invert)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
