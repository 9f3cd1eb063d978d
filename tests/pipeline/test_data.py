import gzip
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import data
from pipeline.data import FILES, DataError


@pytest.fixture
def copy_dir(mnist_dir, tmp_path):
    """A private copy of MNIST, every file gzipped (the tests using it are marked mnist)."""
    d = tmp_path / "mnist"
    d.mkdir()
    _, found = data.locate(str(mnist_dir), tmp_path, allow_download=False)
    for k, (base, _, _) in FILES.items():
        if found[k].suffix == ".gz":
            shutil.copy(found[k], d / f"{base}.gz")
        else:
            (d / f"{base}.gz").write_bytes(gzip.compress(found[k].read_bytes(), compresslevel=1))
    return d


@pytest.mark.mnist
def test_loads_and_verifies_the_shared_copy(mnist_dir, tmp_path):
    src, arrays = data.load_originals(str(mnist_dir), tmp_path, allow_download=False)
    assert src == mnist_dir
    assert arrays["train_images"].shape == (60000, 28, 28)
    assert np.bincount(arrays["test_labels"]).tolist()[:2] == [980, 1135]


@pytest.mark.mnist
def test_raw_files_work_too(copy_dir, tmp_path):
    base = FILES["test_labels"][0]
    (copy_dir / base).write_bytes(gzip.decompress((copy_dir / f"{base}.gz").read_bytes()))
    (copy_dir / f"{base}.gz").unlink()
    _, arrays = data.load_originals(str(copy_dir), tmp_path, allow_download=False)
    assert arrays["test_labels"].shape == (10000,)


@pytest.mark.mnist
def test_truncated_file_is_named(copy_dir, tmp_path):
    target = copy_dir / f"{FILES['test_labels'][0]}.gz"
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match=f"{target}: checksum mismatch"):
        data.load_originals(str(copy_dir), tmp_path, allow_download=False)


@pytest.mark.mnist
def test_one_flipped_byte_is_caught(copy_dir, tmp_path):
    target = copy_dir / f"{FILES['train_labels'][0]}.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[5000] ^= 1
    target.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: checksum mismatch"):
        data.load_originals(str(copy_dir), tmp_path, allow_download=False)


@pytest.mark.mnist
def test_garbage_is_named(copy_dir, tmp_path):
    target = copy_dir / f"{FILES['test_images'][0]}.gz"
    target.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=f"{target}: cannot be read or decompressed"):
        data.load_originals(str(copy_dir), tmp_path, allow_download=False)


@pytest.mark.mnist
def test_incomplete_folder_names_missing_files(copy_dir, tmp_path):
    (copy_dir / f"{FILES['test_images'][0]}.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-images-idx3-ubyte"):
        data.locate(str(copy_dir), tmp_path, allow_download=False)


def test_not_found_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_DIR, raising=False)
    root = tmp_path / "project"  # root.parent has no shared/ copy
    with pytest.raises(DataError) as e:
        data.locate(None, root, allow_download=False)
    assert str(root / "data" / "mnist") in str(e.value) and "allow_download" in str(e.value)


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_DIR, "/from/env")
    dirs = data.search_dirs("/from/config", tmp_path / "p")
    assert [str(d) for d in dirs] == ["/from/config", "/from/env", str(tmp_path / "p" / "data" / "mnist"),
                                      str(tmp_path / "shared" / "datasets" / "mnist")]


@pytest.mark.parametrize("n", [8, 16])
def test_downscale_equals_torchvision_resize_on_pil(n):
    """BitNetMCU's transform: torchvision Resize((n, n)) on the PIL image (antialiased bilinear)."""
    from torchvision.transforms import Resize

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    out = data.downscale(imgs, n)
    assert out.shape == (5, n, n) and out.dtype == np.uint8
    for im, o in zip(imgs, out):
        assert np.array_equal(np.asarray(Resize((n, n))(Image.fromarray(im))), o)


def test_a_failed_download_is_a_message_and_leaves_no_folder(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, train, download):
            (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)   # as torchvision does first
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    monkeypatch.delenv(data.ENV_DIR, raising=False)
    root = tmp_path / "project"
    with pytest.raises(DataError, match=r"data.allow_download: downloading MNIST failed \(<urlopen error"):
        data.locate(None, root, allow_download=True)
    assert not (root / "data" / "MNIST").exists()


def test_validation_split_is_fixed_stratified_and_disjoint():
    labels = np.random.default_rng(3).choice(10, size=6000, p=np.linspace(0.05, 0.15, 10))
    fit, val = data.validation_split(labels, 500)
    assert len(val) == 500 and len(fit) == 5500 and not set(fit) & set(val)
    assert np.all(np.diff(fit) > 0) and np.all(np.diff(val) > 0)       # ascending: training order is kept
    share = np.bincount(labels[val], minlength=10) / 500
    assert np.abs(share - np.bincount(labels, minlength=10) / 6000).max() <= 1 / 500   # each class its share
    again = data.validation_split(labels, 500)
    assert np.array_equal(again[1], val)                                 # the same split every time
    assert data.validation_split(labels, 0)[1].size == 0
