"""data: find and checksum MNIST, downscale it to NxN; readers of its arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.stage import Stage

TRAIN_IMAGES, TRAIN_RAW, TRAIN_LABELS = "train_images.npy", "train_raw.npy", "train_labels.npy"
TEST_IMAGES, TEST_LABELS = "test_images.npy", "test_labels.npy"

STAGE = Stage(
    name="data",
    doc="Find and checksum MNIST, downscale it to NxN (PIL's antialiased bilinear), store as uint8 arrays",
    module="pipeline.data",
    keys=("data.image_size",),
    runtime_keys=("data.mnist_dir", "data.allow_download"),
    outputs=(TRAIN_IMAGES, TRAIN_RAW, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS),
)


def mnist_test(entry: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images (uint8 [B, N, N]) and their labels (int64 [B])."""
    return np.load(entry / TEST_IMAGES), np.load(entry / TEST_LABELS).astype(np.int64)


def mnist_train(entry: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 60,000 training images (uint8 [B, N, N]), the same at 28x28 (for augmentation) and labels (int64)."""
    return np.load(entry / TRAIN_IMAGES), np.load(entry / TRAIN_RAW), np.load(entry / TRAIN_LABELS).astype(np.int64)
