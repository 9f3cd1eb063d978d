"""Dataset stage: locate the four MNIST idx files, prove they are the originals, downscale to NxN.

Search order: `data.mnist_dir` from the config, then $BITMCU_MNIST_DIR, then the project's
`data/mnist/`, then `../shared/datasets/mnist/`. Each file may be raw or gzipped; its uncompressed
MD5 must equal the original's. A found-but-wrong file is an error naming it (never skipped over).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from contract.errors import UserError
from pipeline.stages import data as stage

ENV_DIR = "BITMCU_MNIST_DIR"

# Uncompressed MD5 of the original files, and the shape each must have.
FILES = {
    "train_images": ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", (60000,)),
    "test_images": ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", (10000,)),
}


class DataError(UserError):
    pass


def search_dirs(configured: str | None, root: Path) -> list[Path]:
    dirs = [Path(p) for p in (configured, os.environ.get(ENV_DIR)) if p]
    return dirs + [root / "data" / "mnist", root.parent / "shared" / "datasets" / "mnist"]


def _find(d: Path, base: str) -> Path | None:
    for cand in (d / base, d / f"{base}.gz"):
        if cand.is_file():
            return cand
    return None


def read_verified(path: Path, md5: str, shape: tuple[int, ...]) -> np.ndarray:
    """Read one idx file (raw or .gz), check its MD5 and header, return the array."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot be read or decompressed ({e}); replace it with the original "
                        f"MNIST file") from None
    got = hashlib.md5(raw).hexdigest()
    if got != md5:
        raise DataError(f"{path}: checksum mismatch (MD5 of the uncompressed data is {got}, the original "
                        f"is {md5}); the file is truncated, damaged or not MNIST. Replace it with the "
                        f"original, or remove it so the next location is searched")
    # The checksum fixes the content; the header check guards this table against typos.
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    assert raw[:3] == b"\0\0\x08" and dims == shape, (path, dims)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def locate(configured: str | None, root: Path, allow_download: bool) -> tuple[Path, dict[str, Path]]:
    """The first folder holding any MNIST file, with all four files in it."""
    tried = search_dirs(configured, root)
    for d in tried:
        found = {k: _find(d, base) for k, (base, _, _) in FILES.items()}
        if any(found.values()):
            missing = [FILES[k][0] for k, p in found.items() if p is None]
            if missing:
                raise DataError(f"{d}: holds some MNIST files but lacks {', '.join(missing)} (raw or .gz)")
            return d, found  # type: ignore[return-value]
    if allow_download:
        return _download(root / "data"), {}
    raise DataError("MNIST not found. Searched: " + ", ".join(str(d) for d in tried) +
                    f". Put the four idx files (raw or .gz) in one of them, set data.mnist_dir in the config "
                    f"or ${ENV_DIR}, or set data.allow_download: true")


def _download(dest: Path) -> Path:
    from torchvision.datasets import MNIST  # only needed for this fallback

    made = not (dest / "MNIST").exists()
    try:
        for train in (True, False):
            MNIST(str(dest), train=train, download=True)
    except Exception as e:  # torchvision raises URLError, RuntimeError, OSError... when no mirror answers
        if made:
            shutil.rmtree(dest / "MNIST", ignore_errors=True)   # leave no half-made folder behind
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise DataError(f"data.allow_download: downloading MNIST failed ({first}); put the four idx files in "
                        f"{dest / 'mnist'}, set data.mnist_dir or ${ENV_DIR}") from None
    return dest / "MNIST" / "raw"


def load_originals(configured: str | None, root: Path, allow_download: bool) -> tuple[Path, dict[str, np.ndarray]]:
    d, found = locate(configured, root, allow_download)
    if not found:
        found = {k: _find(d, base) for k, (base, _, _) in FILES.items()}  # type: ignore[misc]
    return d, {k: read_verified(found[k], md5, shape) for k, (_, md5, shape) in FILES.items()}


def downscale(images: np.ndarray, n: int) -> np.ndarray:
    """[B,28,28] uint8 -> [B,n,n] uint8 with PIL's default (antialiased bilinear) resize."""
    if n == images.shape[1]:
        return images.copy()
    return np.stack([np.asarray(Image.fromarray(im).resize((n, n), Image.BILINEAR)) for im in images])


VAL_SEED = 5000  # the validation split is a fact of the data set, the same for every training seed


def validation_split(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation), each ascending: n images held out, each class in its share of labels."""
    counts = np.bincount(labels, minlength=int(labels.max()) + 1)
    want = n * counts / counts.sum()
    take = np.floor(want).astype(np.int64)
    take[np.argsort(take - want, kind="stable")[:n - int(take.sum())]] += 1  # largest remainders round up
    rng = np.random.default_rng(VAL_SEED)
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in enumerate(take)])
    keep = np.ones(len(labels), bool)
    keep[val] = False
    return np.flatnonzero(keep), np.sort(val)


def run(ctx) -> dict:
    from pipeline.stage import ROOT

    n = ctx.cfg["data.image_size"]
    src, arrays = load_originals(ctx.cfg["data.mnist_dir"], ROOT, ctx.cfg["data.allow_download"])
    ctx.log(f"verified MNIST in {src}; downscaling 70,000 images to {n}x{n}")
    np.save(ctx.out / stage.TRAIN_RAW, arrays["train_images"])  # 28x28, for augmentation before downscaling
    np.save(ctx.out / stage.TRAIN_IMAGES, downscale(arrays["train_images"], n))
    np.save(ctx.out / stage.TRAIN_LABELS, arrays["train_labels"].astype(np.uint8))
    np.save(ctx.out / stage.TEST_IMAGES, downscale(arrays["test_images"], n))
    np.save(ctx.out / stage.TEST_LABELS, arrays["test_labels"].astype(np.uint8))
    return {
        "image_size": n,
        "train_images": int(arrays["train_images"].shape[0]),
        "test_images": int(arrays["test_images"].shape[0]),
        "test_class_counts": np.bincount(arrays["test_labels"], minlength=10).tolist(),
    }
