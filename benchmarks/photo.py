"""Accuracy on photo-like pictures: `./run python benchmarks/photo.py [RUN_FOLDER] [--count 1000] [--out PNG]`.

Renders the first 1,000 MNIST test digits as photo-like 640x480 frames (pipeline.fake_photo, a fixed seed,
the conditions in turn), turns each into the model's input with pipeline.photo.preprocess and classifies it
with the run's C library (default run folder: artifacts/runs/default). Prints the photo accuracy beside the
same digits' clean accuracy, the accuracy per condition and the ms per picture of preprocess, and writes a
PNG grid of the failures (photo, the model's input, true and predicted label).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from contract.errors import UserError
from pipeline import fake_photo
from pipeline.data import downscale, load_originals
from pipeline.photo import preprocess

ROOT = Path(__file__).resolve().parent.parent
SEED = 20240601


def failure_grid(rows: list[tuple[np.ndarray, np.ndarray, int, int | None, str]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows[:60]
    cols = 6  # three failures per grid row, each a photo and its model input
    nrows = max(1, (len(rows) + 2) // 3)
    fig, axes = plt.subplots(nrows, cols, figsize=(cols * 2.2, nrows * 1.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (photo, pixels, true, pred, cond) in enumerate(rows):
        a, b = axes[k // 3, 2 * (k % 3)], axes[k // 3, 2 * (k % 3) + 1]
        a.imshow(photo[:, :, ::-1] if photo.ndim == 3 else photo, cmap="gray")
        a.set_title(f"{cond}: true {true}", fontsize=8)
        if pixels is not None:
            b.imshow(pixels, cmap="gray", vmin=0, vmax=255)
        b.set_title("error" if pred is None else f"predicted {pred}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "artifacts" / "runs" / "default"),
                    help="a run folder holding library/ (default: artifacts/runs/default)")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--out", default="/tmp/bitmcu-photo-failures.png", help="the PNG grid of failures")
    args = ap.parse_args()

    from engine.build import load_library, model_info, run_c
    from pipeline.stages import library

    lib_dir = Path(args.run) / "library"
    if not (lib_dir / "summary.json").is_file():
        raise SystemExit(f"{args.run}: no built library; build it with ./run doit cfg=configs/default.yaml library")
    lib = load_library(library.library(lib_dir))
    n = model_info(lib)["image_size"]
    _, arrays = load_originals(None, ROOT, False)
    images, labels = arrays["test_images"][:args.count], arrays["test_labels"][:args.count].astype(int)
    clean = run_c(lib, downscale(images, n), trace=False)["preds"]

    rng = np.random.default_rng(SEED)
    conds = [fake_photo.CONDITIONS[i % len(fake_photo.CONDITIONS)] for i in range(len(images))]
    photos = [fake_photo.render(im, rng, cond) for im, cond in zip(images, conds)]
    pixels = np.zeros((len(images), n, n), np.uint8)
    failed: dict[int, str] = {}
    t0 = time.perf_counter()
    for i, photo in enumerate(photos):
        try:
            pixels[i] = preprocess(photo, n).pixels
        except UserError as e:
            failed[i] = str(e)
    ms = (time.perf_counter() - t0) * 1000 / len(photos)
    preds = run_c(lib, pixels, trace=False)["preds"]
    right = (preds == labels) & np.array([i not in failed for i in range(len(images))])

    print(f"{len(images)} photo-like pictures (640x480) of the first {len(images)} MNIST test digits, seed {SEED}, "
          f"model {args.run} ({n}x{n})")
    print(f"photo accuracy {right.mean():.2%}   clean accuracy of the same digits {(clean == labels).mean():.2%}   "
          f"preprocess {ms:.1f} ms per picture   no digit found: {len(failed)}")
    for cond in fake_photo.CONDITIONS:
        sel = np.array([c == cond for c in conds])
        print(f"  {cond:13s} {right[sel].mean():7.2%}  ({int(sel.sum())} pictures)")
    rows = [(photos[i], None if i in failed else pixels[i], int(labels[i]), None if i in failed else int(preds[i]),
             conds[i]) for i in np.flatnonzero(~right)]
    out = Path(args.out)
    failure_grid(rows, out)
    both = int((~right & (clean != labels)).sum())
    print(f"{len(rows)} failures (the first {min(len(rows), 60)} drawn) in {out}; {both} of them are also wrong "
          f"as clean images, and {int((right & (clean != labels)).sum())} digits wrong as clean images are right "
          "as photos")


if __name__ == "__main__":
    main()
