"""Weight quantizers, clipping (prop / OCTAV) and the exact ShiftNorm activation path for QAT.

Every forward value produced here is the integer arithmetic of engine/CONTRACT.md; only the
backward pass is approximate (straight-through estimators).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from contract.formats import FORMATS, NF4_CODES
from contract.spec import CLIPS, MAX_OUT_SHIFT, NORMS

CLIP_MIN = 1e-12             # a clip of 0 (all-zero weights) would divide by zero


class _STE(torch.autograd.Function):
    """Forward returns `codes` bit-exactly; backward passes the gradient to `t` unchanged."""

    @staticmethod
    def forward(ctx, t: Tensor, codes: Tensor) -> Tensor:  # type: ignore[override]
        return codes.clone()

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return g, None


def _bcast(v: Tensor, w: Tensor) -> Tensor:
    """Per-tensor clip (0-d) stays scalar; a per-output clip [out] broadcasts over every input axis."""
    return v if v.dim() == 0 else v.reshape(-1, *([1] * (w.dim() - 1)))


def round_codes(fmt: str, t: Tensor) -> Tensor:
    """Integer codes (as float) for the scaled weight t = w * scale; no gradient."""
    if fmt in ("binary", "binarybalanced"):
        return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)        # sign with 0 -> +1
    if fmt == "ternary":
        return torch.round(t).clamp(-1, 1)
    if fmt in ("2bitsym", "4bitsym"):
        m = FORMATS[fmt].max_abs_code                             # nearest odd integer
        return (2 * torch.floor(t / 2) + 1).clamp(-m, m)
    if fmt == "4bit":
        return torch.round(t).clamp(-8, 7)                        # torch.round: half to even
    if fmt == "8bit":
        return torch.round(t).clamp(-128, 127)
    if fmt == "fp130":
        # nearest power of two in the log domain (boundary at 2^(e+1/2)); |t|=0 gives e=0
        e = torch.round(torch.log2(t.abs())).clamp(0, 7)
        return torch.where(t >= 0, 1.0, -1.0).to(t.dtype) * torch.exp2(e)
    if fmt == "nf4":
        table = torch.tensor(NF4_CODES, dtype=t.dtype, device=t.device)
        idx = (t.unsqueeze(-1) - table).abs().argmin(-1)         # ties -> lower index
        return table[idx]
    if fmt == "none":
        return t
    raise ValueError(f"quant.formats: unknown format {fmt!r} (allowed: {', '.join(FORMATS)})")


def quantize(w: Tensor, fmt: str, clip: Tensor) -> tuple[Tensor, Tensor]:
    """(codes, scale) with dequantized weight = codes / scale.

    `clip` is 0-d (per tensor) or [out] (per output). Forward: integer-valued codes; backward:
    d codes / d w = scale, i.e. the dequantized weight is a straight-through copy of w
    (no masking of clipped weights, so they can move back into range).
    """
    spec = FORMATS[fmt]
    scale = spec.scale_per_clip / _bcast(clip.to(w.dtype).clamp_min(CLIP_MIN), w)
    src = w
    if fmt == "binarybalanced":            # centre per tensor, or per row for per-output scaling
        dims = tuple(range(w.dim())) if clip.dim() == 0 else tuple(range(1, w.dim()))
        src = w - w.detach().mean(dim=dims, keepdim=True)
    t = src * scale
    return _STE.apply(t, round_codes(fmt, t.detach())), scale


def pow2_clip(clip: Tensor, prev: Tensor | None = None, hysteresis: float = 0.25) -> tuple[Tensor, Tensor]:
    """Round per-output clips to powers of two 2^e[o]; returns (effective clip, shifts k).

    e = round(log2 clip), but a row keeps its previous exponent while |log2 clip - e_prev| <=
    0.5 + hysteresis, so rows near a rounding boundary do not flip by 2x every epoch (each flip
    changes that row's codes with no training to adapt). Rows below 2^(max e - 7) are raised to it.
    Row o's accumulator times 2^k[o], k = e - min(e) in [0, 7], is proportional to its float output
    (CONTRACT §3); a common factor 2^j on every row changes nothing downstream (ShiftNorm and argmax).
    """
    lc = torch.log2(clip.clamp_min(CLIP_MIN))
    e = torch.round(lc)
    if prev is not None:
        ep = torch.round(torch.log2(prev.clamp_min(CLIP_MIN)))
        e = torch.where((lc - ep).abs() <= 0.5 + hysteresis, ep, e)
    e = torch.maximum(e, e.max() - MAX_OUT_SHIFT)
    return torch.exp2(e), pow2_shifts(torch.exp2(e))


def pow2_shifts(clip: Tensor) -> Tensor:
    """Shifts k = e - min(e) of power-of-two per-output clips 2^e (as stored after pow2_clip)."""
    e = torch.round(torch.log2(clip.clamp_min(CLIP_MIN)))
    return (e - e.min()).to(torch.int64)


def octav_objective(w_abs: Tensor, s: Tensor, bits: float) -> Tensor:
    """OCTAV's MSE J(s) = (4^-B/3) s^2 N(|w|<=s) + sum_{|w|>s} (|w|-s)^2, reduced over the last dim."""
    s = s.unsqueeze(-1)
    over = w_abs > s
    noise = (4.0 ** -bits / 3) * s.squeeze(-1) ** 2 * (~over).sum(-1)
    return noise + torch.where(over, (w_abs - s) ** 2, 0.0).sum(-1)


def octav_clip(w_abs: Tensor, bits: float, iters: int = 30) -> Tensor:
    """MSE-optimal clip (Sakr et al. 2022) per slice of the last dim, by fixed-point iteration.

    s <- sum_{|w|>s} |w| / ((4^-B/3) N(|w|<=s) + N(|w|>s)), started at mean|w|. The iterate with
    the lowest J is returned, which guards against the 2-cycles tiny rows (e.g. 9 conv taps) show.
    """
    a = w_abs.detach().to(torch.float64)
    eps = 4.0 ** -bits / 3
    s = a.mean(-1)
    best, best_j = s, octav_objective(a, s, bits)
    for _ in range(iters):
        over = a > s.unsqueeze(-1)
        n_over = over.sum(-1)
        s = torch.where(over, a, 0.0).sum(-1) / (eps * (a.shape[-1] - n_over) + n_over)
        j = octav_objective(a, s, bits)
        better = j < best_j
        best, best_j = torch.where(better, s, best), torch.where(better, j, best_j)
    return best.to(w_abs.dtype)


def compute_clip(w: Tensor, fmt: str, method: str, per_output: bool, prop_scale: float = 0.25) -> Tensor:
    """The per-epoch clip update: 0-d tensor (per tensor) or [out] (per output).

    prop: mean|w| / prop_scale (per tensor, or per row with per_output; the row mean rather than
    the row max, so one outlier does not blow up a row's range). octav: octav_clip with B = level_bits.
    """
    a = w.detach().abs().reshape(w.shape[0] if per_output else 1, -1)
    if method == "prop":
        c = a.mean(-1) / prop_scale
    elif method == "octav":
        c = octav_clip(a, FORMATS[fmt].level_bits)
    else:
        raise ValueError(f"quant.clip: unknown method {method!r} (allowed: {', '.join(CLIPS)})")
    c = c.clamp_min(CLIP_MIN)
    return c if per_output else c.reshape(())


def bitlen_minus7(m: Tensor) -> Tensor:
    """max(0, bitlen(m) - 7) for non-negative integer values m (int or float dtype), as int64.

    Counts the thresholds 2^7 .. 2^62 that m reaches: exact comparisons only (no log2 rounding),
    and nothing torch.compile's CPU code generator trips over (it cannot vectorise frexp on float64).
    """
    pows = torch.arange(7, 63, device=m.device, dtype=torch.int64)
    thresholds = torch.exp2(pows.to(m.dtype)) if m.is_floating_point() else 1 << pows
    return (m.unsqueeze(-1) >= thresholds).sum(-1)


def shiftnorm(acc: Tensor) -> tuple[Tensor, Tensor]:
    """CONTRACT §4 on a batch: ReLU, per-sample shift s, round half up, clamp 127.

    acc [B, ...] holds integers (int dtype: pure integer ops; float dtype: exact while every value
    is below 2^24 in float32, as QLayer.dtype guarantees, or 2^53 in float64). Returns (q with acc's
    dtype, s int64 [B]). No gradient, and no data-dependent branch (so torch.compile keeps one graph).
    """
    b = acc.shape[0]
    view = (b,) + (1,) * (acc.dim() - 1)
    if not acc.is_floating_point():
        y = acc.to(torch.int64).clamp_min(0)
        m = y.reshape(b, -1).amax(1) if y[0].numel() else y.new_zeros(b)
        s = bitlen_minus7(m)
        sv = s.view(view)
        return ((y + ((1 << sv) >> 1)) >> sv).clamp_max(127).to(acc.dtype), s
    y = acc.detach().clamp_min(0)
    m = y.reshape(b, -1).amax(1) if y[0].numel() else y.new_zeros(b)
    s = bitlen_minus7(m)
    # y * 2^-s has at most bitlen(m) <= 24 significant bits (53 in float64), and so has y * 2^-s + 1/2
    # (it is < 128.5): exact in y's dtype, so this is the integer round-half-up of CONTRACT §4
    q = torch.floor(y * torch.exp2(-s.to(y.dtype)).view(view) + 0.5).clamp_max(127)
    return q, s


def _feature_dims(v: Tensor, norm: str) -> tuple[int, ...]:
    """The dims a normalization reduces over: features per sample, or the batch (and pixels) per feature."""
    if norm == "batchnorm":
        return (0, 2, 3) if v.dim() == 4 else (0,)
    return tuple(range(1, v.dim()))


def _stats(v: Tensor, norm: str, eps: float) -> tuple[Tensor, Tensor]:
    """(centre, scale) of the normalization: per sample over features, or per feature (channel) over the batch."""
    dims = _feature_dims(v, norm)
    if norm == "rms":
        return torch.zeros((), dtype=v.dtype), torch.sqrt((v * v).mean(dim=dims, keepdim=True) + eps)
    if norm == "lin":
        return torch.zeros((), dtype=v.dtype), v.abs().mean(dim=dims, keepdim=True) + eps
    if norm == "batchnorm":
        mu = v.mean(dim=dims, keepdim=True)
        return mu, torch.sqrt(((v - mu) ** 2).mean(dim=dims, keepdim=True) + eps)
    raise ValueError(f"quant.norm: unknown norm {norm!r} (allowed: {', '.join(NORMS)})")


def _requant_forward(acc: Tensor, norm: str, eps: float) -> tuple[Tensor, ...]:
    y = acc.clamp_min(0)
    q, s = shiftnorm(y)
    mu, sigma = _stats(y, norm, eps)
    return q, s, mu, sigma, _stats(q, norm, eps)[1]


def _requant_backward(g: Tensor, acc: Tensor, mu: Tensor, sigma: Tensor, sigma_q: Tensor, norm: str) -> Tensor:
    y = acc.clamp_min(0)
    dims = _feature_dims(y, norm)
    if norm == "rms":       # sigma = sqrt(mean y^2 + eps): d sigma / dy = y / (n sigma)
        inner = g - y * ((g * y).mean(dims, keepdim=True) / (sigma * sigma))
    elif norm == "lin":     # sigma = mean|y| + eps: d sigma / dy = sign(y) / n
        inner = g - torch.sign(y) * ((g * y).mean(dims, keepdim=True) / sigma)
    else:                   # batchnorm: the usual closed form, biased variance
        xhat = (y - mu) / sigma
        inner = g - g.mean(dims, keepdim=True) - xhat * (g * xhat).mean(dims, keepdim=True)
    return torch.where(acc > 0, inner * (sigma_q / sigma), 0.0)


_FUSED: dict[str, Callable[..., Any]] = {}


def _kernels(fused: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The two halves eagerly, or each compiled into a few fused loops (built on first use)."""
    if not fused:
        return _requant_forward, _requant_backward
    if not _FUSED:
        _FUSED.update(fwd=torch.compile(_requant_forward, dynamic=False),
                      bwd=torch.compile(_requant_backward, dynamic=False))
    return _FUSED["fwd"], _FUSED["bwd"]


class _Requant(torch.autograd.Function):
    """Forward: shiftnorm(acc), the contract's integers (its ReLU included). Backward: the Jacobian of
    the float surrogate sur(acc) = (y - mu(y)) / sigma(y) * sigma(q) with y = relu(acc) (sigma(q) a
    constant), written out in closed form:
    an autograd graph of the surrogate costs ~15 extra ops per layer and step, most of the step's time.
    The surrogate is rescaled by sigma(q) so its slope has the size of the true slope ~2^-s and
    gradients keep their scale through deep stacks. tests/pipeline/test_quant.py checks this backward against
    autograd of sur(acc). `fused` runs both halves through torch.compile (each is ~15 passes over a
    CNN's feature maps when eager); taking the ReLU in here saves two more passes.
    """

    @staticmethod
    def forward(ctx, acc: Tensor, norm: str, eps: float, fused: bool) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        fwd, ctx.bwd = _kernels(fused)
        q, s, mu, sigma, sigma_q = fwd(acc, norm, eps)
        ctx.save_for_backward(acc, mu, sigma, sigma_q)
        ctx.norm = norm
        ctx.mark_non_differentiable(s)
        return q, s

    @staticmethod
    def backward(ctx, g: Tensor, _: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        acc, mu, sigma, sigma_q = ctx.saved_tensors
        return ctx.bwd(g, acc, mu, sigma, sigma_q, ctx.norm), None, None, None


def surrogate(acc: Tensor, norm: str, eps: float, sigma_q: Tensor) -> Tensor:
    """The float function whose Jacobian requant's backward pass uses (for tests and documentation)."""
    y = torch.relu(acc)
    mu, sigma = _stats(y, norm, eps)
    return (y - mu) / sigma * sigma_q


def requant(acc: Tensor, norm: str, eps: float = 1e-5, fused: bool = False) -> tuple[Tensor, Tensor]:
    """QAT ReLU + ShiftNorm of (max-pooled) accumulators: forward value = shiftnorm(acc) exactly;
    backward = d surrogate(acc) / d acc.

    All-zero input gives finite gradients: eps keeps sigma positive. fused: see _Requant.
    """
    if not acc.requires_grad:
        return shiftnorm(acc)
    return _Requant.apply(acc, norm, eps, fused)


def code_entropy(codes: Tensor) -> float:
    """Shannon entropy (bits) of the histogram of a code tensor."""
    _, counts = torch.unique(codes.detach().flatten(), return_counts=True)
    p = counts.to(torch.float64) / counts.sum()
    return float(-(p * torch.log2(p)).sum())
