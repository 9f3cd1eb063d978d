"""Tests for pipeline.augment: shapes, determinism, exact identity, geometry vs torchvision, elastic."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import ElasticTransform, InterpolationMode
from torchvision.transforms import functional as TF

from pipeline import augment as aug
from pipeline import data
from pipeline.augment import AugmentSpec, affine_theta, augment, sampling_grid, warp

IDENTITY = AugmentSpec(rotation_deg=0.0, translate=0.0, scale_min=1.0, scale_max=1.0, elastic_prob=0.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def digits(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 [n,28,28] MNIST-like images: a random blobby stroke pattern, zero border."""
    g = gen(seed)
    x = (torch.rand(n, 1, 7, 7, generator=g) > 0.6).float() * torch.randint(100, 256, (n, 1, 1, 1), generator=g)
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    return F.pad(x, (4, 4, 4, 4)).round().clamp(0, 255).to(torch.uint8)[:, 0]


def thetas(n: int, angle: float = 0.0, scale: float = 1.0, tx: float = 0.0, ty: float = 0.0) -> torch.Tensor:
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return affine_theta(full(angle), full(scale), full(tx), full(ty), 28)


@pytest.fixture(scope="module")
def real_images(mnist_dir) -> torch.Tensor:
    """The first 2000 MNIST test images (tests using them are marked mnist)."""
    _, found = data.locate(str(mnist_dir), mnist_dir, allow_download=False)
    _, md5, shape = data.FILES["test_images"]
    return torch.from_numpy(data.read_verified(found["test_images"], md5, shape)[:2000].copy())


@pytest.mark.parametrize("out_size", [16, 28])
@pytest.mark.parametrize("shape", [(5, 28, 28), (5, 1, 28, 28)])
def test_dtype_shape_device(shape, out_size):
    raw = torch.zeros(shape, dtype=torch.uint8)
    out = augment(raw, out_size, AugmentSpec(elastic_prob=0.5), gen(0))
    assert out.dtype == torch.uint8 and out.shape == (5, 1, out_size, out_size) and out.device == raw.device


def test_rejects_bad_shape():
    with pytest.raises(ValueError):
        augment(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), 16, AugmentSpec(), gen(0))


def test_deterministic_per_seed():
    raw, spec = digits(300), AugmentSpec(elastic_prob=0.5)
    a, b, c = (augment(raw, 16, spec, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_chunking_does_not_change_result(monkeypatch, p):
    raw, spec = digits(50), AugmentSpec(elastic_prob=p)
    whole = augment(raw, 16, spec, gen(3))
    monkeypatch.setattr(aug, "CHUNK", 7)
    assert torch.equal(augment(raw, 16, spec, gen(3)), whole)


@pytest.mark.mnist
def test_identity_is_exact(real_images):
    for raw in (real_images, torch.randint(0, 256, (500, 28, 28), dtype=torch.uint8, generator=gen(4))):
        ref16 = F.interpolate(raw[:, None].float(), size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
        assert torch.equal(augment(raw, 16, IDENTITY, gen(0)), ref16.round().clamp(0, 255).to(torch.uint8))
        assert torch.equal(augment(raw, 28, IDENTITY, gen(0)), raw[:, None])


def test_identity_grid_reproduces_pixels():
    """The identity grid (align_corners=False) lands on pixel centres up to float error < 0.01 level."""
    raw = torch.randint(0, 256, (64, 1, 28, 28), generator=gen(5)).float()
    theta = thetas(64)
    out = F.grid_sample(raw, F.affine_grid(theta, [64, 1, 28, 28], align_corners=False), align_corners=False)
    assert (out - raw).abs().max() < 0.01
    assert torch.equal(out.round(), raw)


def test_sampling_grid_matches_affine_grid():
    theta = affine_theta(torch.rand(100) * 40 - 20, torch.rand(100) * 0.2 + 0.9, torch.randn(100), torch.randn(100), 28)
    ref = F.affine_grid(theta, [100, 1, 28, 28], align_corners=False)
    assert (sampling_grid(theta, 28) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("tx,ty", [(3, -2), (-1, 4), (0, 0)])
def test_integer_translation_moves_pattern(tx, ty):
    raw = torch.randint(1, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=gen(6))
    out = warp(raw.float(), thetas(4, tx=tx, ty=ty), 28)
    expected = torch.zeros_like(raw)
    expected[..., max(ty, 0):28 + min(ty, 0), max(tx, 0):28 + min(tx, 0)] = \
        raw[..., max(-ty, 0):28 - max(ty, 0), max(-tx, 0):28 - max(tx, 0)]
    assert torch.equal(out, expected)


def test_rotation_90_matches_rot90():
    raw = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=gen(7))
    assert torch.equal(warp(raw.float(), thetas(4, angle=90), 28), torch.rot90(raw, 1, (-2, -1)))


@pytest.mark.mnist
def test_geometry_matches_torchvision(real_images):
    """Same maps as torchvision's tensor affine (bilinear); its `affine` angle is clockwise, ours CCW."""
    raw = real_images[:200, None]
    for angle, scale, tx, ty in [(15.0, 1.0, 0.0, 0.0), (-17.0, 0.9, -2.5, 1.3), (8.0, 1.1, 2.0, -3.0)]:
        ours = warp(raw.float(), thetas(200, angle, scale, tx, ty), 28).int()
        ref = TF.affine(raw.float(), -angle, [tx, ty], scale, [0.0, 0.0], InterpolationMode.BILINEAR)
        diff = (ours - ref.round().int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


def test_rotated_blob_keeps_mass_and_centre():
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = (200 * torch.exp(-((xx - 13.5) ** 2 + ((yy - 13.5) / 0.5) ** 2) / 18)).round()[None, None]
    out = warp(blob, thetas(1, angle=33), 28).float()
    assert abs(out.sum() / blob.sum() - 1) < 0.1
    cy, cx = (out[0, 0] * yy).sum() / out.sum(), (out[0, 0] * xx).sum() / out.sum()
    assert abs(cy - 13.5) < 0.3 and abs(cx - 13.5) < 0.3
    assert not torch.equal(out, blob)  # anisotropic blob really turned


def test_random_translation_within_bounds():
    raw = torch.zeros(400, 28, 28, dtype=torch.uint8)
    raw[:, 13:15, 13:15] = 255
    spec = AugmentSpec(rotation_deg=0.0, scale_min=1.0, scale_max=1.0)
    out = augment(raw, 28, spec, gen(8))[:, 0].float()
    coords = torch.arange(28.0)
    cx = (out.sum(1) * coords).sum(1) / out.sum((1, 2)) - 13.5
    cy = (out.sum(2) * coords).sum(1) / out.sum((1, 2)) - 13.5
    for c in (cx, cy):
        assert c.abs().max() <= 2.8 + 0.05 and c.min() < -2 and c.max() > 2


@pytest.mark.mnist
def test_elastic_changes_images_keeps_range(real_images):
    raw = real_images[:300]
    plain = augment(raw, 16, AugmentSpec(), gen(9))
    warped = augment(raw, 16, AugmentSpec(elastic_prob=1.0), gen(9))  # same affine draws, then elastic
    changed = (plain != warped).flatten(1).any(1)
    assert changed.all()
    assert warped.max() <= 255 and warped.max() > 200
    ratio = warped.float().sum() / plain.float().sum()
    assert 0.85 < ratio < 1.15


def test_elastic_probability_selects_some():
    raw = digits(400)
    plain = augment(raw, 28, AugmentSpec(), gen(10))
    half = augment(raw, 28, AugmentSpec(elastic_prob=0.5), gen(10))
    frac = (plain != half).flatten(1).any(1).float().mean()
    assert 0.35 < frac < 0.65


def test_elastic_field_matches_torchvision_statistics():
    ours = aug.elastic_displacement(400, 28, AugmentSpec(), gen(11), torch.device("cpu"))
    with torch.random.fork_rng():
        torch.manual_seed(11)
        ref = torch.cat([ElasticTransform.get_params([40.0, 40.0], [4.0, 4.0], [28, 28]) for _ in range(400)])
    ours_std, ref_std = ours.std().item(), ref.std().item()
    assert abs(ours_std / ref_std - 1) < 0.1
    assert abs(ours.mean().item()) < 0.1 * ours_std


def test_blur_matrix_matches_torchvision():
    noise = torch.rand(3, 2, 28, 28, generator=gen(12))
    b = aug._blur_matrix(28, 4.0)
    assert (b @ noise @ b.T - TF.gaussian_blur(noise, [33, 33], [4.0, 4.0])).abs().max() < 1e-5


def test_uniform_noise_range_and_moments():
    u = aug._uniform_pm1(300_001, gen(13))
    assert u.shape == (300_001,) and u.min() > -1 and u.max() < 1
    assert abs(u.mean()) < 0.01 and abs(u.var() - 1 / 3) < 0.01
    assert len(u.unique()) == 256  # all byte values used, symmetric about 0
    assert torch.equal(u.unique(), -u.unique().flip(0))


@pytest.mark.parametrize("spec", [AugmentSpec(), AugmentSpec(elastic_prob=1.0), IDENTITY])
def test_blank_stays_blank(spec):
    out = augment(torch.zeros(20, 28, 28, dtype=torch.uint8), 16, spec, gen(14))
    assert not out.any()


@pytest.mark.cuda
def test_cuda_matches_cpu_with_cpu_generator():
    raw, spec = digits(300), AugmentSpec(elastic_prob=0.5)
    cpu = augment(raw, 16, spec, gen(15))
    gpu = augment(raw.cuda(), 16, spec, gen(15))
    assert gpu.device.type == "cuda"
    diff = (gpu.cpu().int() - cpu.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    cuda_gen = torch.Generator(device="cuda").manual_seed(15)
    assert augment(raw.cuda(), 16, spec, cuda_gen).device.type == "cuda"
