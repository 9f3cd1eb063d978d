"""Whole-batch MNIST augmentation as tensor ops (replaces BitNetMCU's per-PIL-image torchvision chain).

BitNetMCU applies RandomRotation(10) -> RandomAffine(10, translate 0.1, scale 0.9..1.1) -> optional
ElasticTransform(40, 4) -> antialiased bilinear resize, one PIL image at a time. Here all geometric
steps become one sampling grid per image (affine matrix + optional elastic displacement), sampled once
with `grid_sample` over a chunk of images, then one antialiased `interpolate` to the model's size.

Randomness: every draw comes from the `generator` argument, made on the generator's own device, then
moved to the images' device. With a CPU generator the draws (hence the geometry) are identical whether
the images live on CPU or GPU; pass a CPU generator when cross-device reproducibility matters. On CPU,
equal generator state gives bit-identical output.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

# Images per grid_sample call on CPU. Keeps every temporary well under glibc's 32 MB mmap ceiling:
# bigger buffers are freshly mapped (page-faulted) on each allocation, measured ~10x slower. GPUs
# have no such cliff and want few, large launches, so they take GPU_CHUNK.
CHUNK, GPU_CHUNK = 1024, 32768


@dataclass(frozen=True)
class AugmentSpec:
    rotation_deg: float = 20.0  # total max |rotation| (BitNetMCU stacks two +-10 deg rotations)
    translate: float = 0.1  # max shift as a fraction of the image size, each axis
    scale_min: float = 0.9
    scale_max: float = 1.1
    elastic_prob: float = 0.0
    elastic_alpha: float = 40.0  # torchvision's meaning: grid shift = alpha/size * blurred U(-1,1)
    elastic_sigma: float = 4.0


def affine_theta(angle_deg: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
                 size: int) -> torch.Tensor:
    """[N,2,3] `affine_grid` matrices that rotate content counter-clockwise (as seen, y down) by
    angle_deg about the centre, scale it by `scale`, then shift it by (tx, ty) pixels (+x right, +y down).
    affine_grid maps output coords to input coords, so theta is the inverse of that forward map."""
    a = torch.deg2rad(angle_deg.double())
    c, s = torch.cos(a) / scale.double(), torch.sin(a) / scale.double()
    t = torch.stack([tx, ty], -1).double() * (2.0 / size)  # pixels -> normalized units (square image)
    inv = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # R(a)^T / scale
    return torch.cat([inv, -(inv @ t.unsqueeze(-1))], -1).float()


def sampling_grid(theta: torch.Tensor, size: int, disp: torch.Tensor | None = None) -> torch.Tensor:
    """F.affine_grid(theta, [N,1,size,size], align_corners=False), optionally of displaced points.
    Built by broadcasting as [N,2,S,S] planes, returned as a [N,S,S,2] view (grid_sample takes it as
    is): affine_grid's per-sample [S*S,3]x[3,2] bmm, or an inner dim of 2, is 3-10x slower on CPU.
    disp [N,2,S,S] (x, y planes, grid units) is added before the affine, as torchvision's chain runs
    elastic after the affine: out(p) = affine_img(p + d) = in(A(p + d) + b)."""
    n = theta.shape[0]
    base = ((torch.arange(size, dtype=torch.float64) * 2 + 1) / size - 1).float().to(theta.device)
    px, py = base.view(1, 1, 1, size), base.view(1, 1, size, 1)
    if disp is not None:
        px, py = disp[:, :1] + px, disp[:, 1:] + py
    a = theta.view(n, 2, 3, 1, 1)
    return torch.addcmul(torch.addcmul(a[:, :, 2], a[:, :, 1], py), a[:, :, 0], px).permute(0, 2, 3, 1)


@lru_cache(maxsize=8)
def _blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """[size,size] matrix equal to torchvision's gaussian_blur along one axis (kernel int(8s+1) made
    odd, reflect padding). Two small GEMMs beat a 33-tap conv by far on CPU."""
    k = int(8 * sigma + 1) | 1
    x = torch.arange(k, dtype=torch.float64) - k // 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    period, m = 2 * (size - 1), torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):  # size*k scalar steps, once per (size, sigma): builds a matrix, not data
        for j in range(k):
            idx = (i + j - k // 2) % period
            m[i, idx if idx < size else period - idx] += w[j]
    return m.float()


def _uniform_pm1(numel: int, generator: torch.Generator) -> torch.Tensor:
    """numel samples of U(-1,1) on 256 levels, (k + 0.5)/128: eight per 64-bit draw, ~5x faster than
    torch.rand on a CPU generator (serial Mersenne Twister, one call per float). The blur averages
    ~200 samples, so the quantization moves a displacement by ~0.4% of its spread."""
    r = torch.empty((numel + 7) // 8, dtype=torch.int64, device=generator.device)
    r.random_(-(2**63), None, generator=generator)  # all 64 bits uniform
    return (r.view(torch.int8)[:numel].float() + 0.5) * (1 / 128)


def elastic_displacement(n: int, size: int, spec: AugmentSpec, generator: torch.Generator,
                         device: torch.device) -> torch.Tensor:
    """[n,2,size,size] (x, y) displacement in grid units, distributed as torchvision's ElasticTransform."""
    f = _uniform_pm1(n * 2 * size * size, generator).to(device).view(n, 2, size, size)
    gain = spec.elastic_alpha / size  # torchvision: grid shift = blurred noise * alpha / size
    if spec.elastic_sigma <= 0:
        return f * gain
    b = _blur_matrix(size, float(spec.elastic_sigma)).to(device)
    return torch.matmul(b * gain, f @ b.T)  # blur along x, then along y (gain folded in)


def warp(img: torch.Tensor, theta: torch.Tensor, out_size: int,
         disp: torch.Tensor | None = None) -> torch.Tensor:
    """Float images [N,1,S,S] -> uint8 [N,1,out_size,out_size]: sample, downscale, round half-to-even."""
    grid = sampling_grid(theta, img.shape[-1], disp)
    x = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Round at full size too, as BitNetMCU's PIL chain holds uint8 there; this also makes the identity
    # warp exact (grid_sample's float unnormalization is off by ~1e-3 gray levels).
    x = x.round_()
    if out_size != img.shape[-1]:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_()
    return x.clamp_(0, 255).to(torch.uint8)


def augment(raw: torch.Tensor, out_size: int, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """raw: uint8 [B,28,28] (or [B,1,28,28]) on any device -> uint8 [B,1,out_size,out_size] on the same device.

    Draw order (fixed, so a seed pins everything): angle, scale, tx, ty for the whole batch, then the
    elastic selection mask (only if elastic_prob > 0), then the selected images' noise in order. Each
    image's noise is a whole number of 64-bit draws, so with a CPU generator chunking changes nothing."""
    x = raw if raw.dim() == 4 else raw.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f"expected [B,S,S] or [B,1,S,S] images, got {tuple(raw.shape)}")
    b, size, dev = x.shape[0], x.shape[-1], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        u = torch.rand(b, generator=generator, device=generator.device, dtype=torch.float64)
        return (lo + (hi - lo) * u).to(dev)

    shift = spec.translate * size
    angle, scale = uniform(-spec.rotation_deg, spec.rotation_deg), uniform(spec.scale_min, spec.scale_max)
    theta = affine_theta(angle, scale, uniform(-shift, shift), uniform(-shift, shift), size)
    elastic = None
    if spec.elastic_prob > 0:
        elastic = (torch.rand(b, generator=generator, device=generator.device) < spec.elastic_prob).cpu()

    out = torch.empty(b, 1, out_size, out_size, dtype=torch.uint8, device=dev)
    step = CHUNK if dev.type == "cpu" else GPU_CHUNK  # result does not depend on it (CPU generator)
    for lo in range(0, b, step):
        hi = min(lo + step, b)
        disp = None
        sel = elastic[lo:hi].nonzero().squeeze(1) if elastic is not None else None
        if sel is not None and len(sel) == hi - lo:
            disp = elastic_displacement(hi - lo, size, spec, generator, dev)
        elif sel is not None and len(sel):
            disp = torch.zeros(hi - lo, 2, size, size, device=dev)
            disp[sel.to(dev)] = elastic_displacement(len(sel), size, spec, generator, dev)
        out[lo:hi] = warp(x[lo:hi].float(), theta[lo:hi], out_size, disp)
    return out
