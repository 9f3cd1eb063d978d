"""QAT models (FC and sequential-depthwise CNN) whose forward values follow engine/CONTRACT.md.

`QModel.forward` trains (straight-through gradients); `QModel.int_eval` is the exact integer
reference that the numba and C engines are compared with, layer by layer.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.formats import FORMATS
from contract.spec import ACC_LIMIT, F32_EXACT, ModelSpec, layer_bound
from pipeline.quant import code_entropy, compute_clip, pow2_clip, pow2_shifts, quantize, requant, shiftnorm


class IntResult(NamedTuple):
    logits: Tensor                        # int64 [B, classes]
    acts: list[tuple[str, Tensor]]        # int64, contract order: input x0, every requant output, logits
    shifts: list[tuple[str, Tensor]]      # int64 [B]: the ShiftNorm shift s of each requant


class QLayer(nn.Module):
    """One bias-free weight layer: float weight, its clip, and its format."""

    def __init__(self, g: dict[str, Any], fmt: str, per_output: bool) -> None:
        super().__init__()
        self.g, self.fmt, self.per_output = g, fmt, per_output
        shape = {"fc": (g["n_out"], g["n_in"]), "pwconv": (g["n_out"], g["n_in"], 1, 1)}.get(
            g["kind"], (g["n_out"], g["n_in"] // 9, 3, 3))
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))   # torch's default Linear/Conv2d init
        self.register_buffer("clip", torch.ones(g["n_out"]) if per_output else torch.ones(()))
        # float32 sums of integers are exact below 2^24; bigger layers compute in float64
        self.dtype = (torch.float64 if fmt != "none" and layer_bound(g["n_in"], fmt, 0) >= F32_EXACT
                      else torch.float32)

    def quant(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(codes with STE, per-output shifts k) for the (possibly gated) weight w."""
        if self.per_output:              # the stored clip is already a power of two per row
            clip, k = self.clip, pow2_shifts(self.clip)
        else:
            clip, k = self.clip, torch.zeros(self.g["n_out"], dtype=torch.int64, device=self.clip.device)
        return quantize(w, self.fmt, clip)[0], k


def _channels_last(x: Tensor) -> Tensor:
    """A copy of [B, C, H, W] x laid out channels-last, even for C = 1 (where .contiguous() with
    memory_format=channels_last keeps the NCHW strides, as both layouts are then valid).

    oneDNN's convolutions keep this layout for their outputs, and on a CPU the first convolution and
    max_pool2d run several times faster in it than in NCHW (a CNN-64 epoch: 9.5 s instead of 13-15 s).
    Values are the same in any layout.
    """
    b, c, h, w = x.shape
    return torch.empty_strided(x.shape, (c * h * w, 1, w * c, c), dtype=x.dtype, device=x.device).copy_(x)


def _apply(x: Tensor, codes: Tensor, g: dict[str, Any]) -> Tensor:
    if g["kind"] == "fc":
        return x @ codes.t()
    return F.conv2d(x, codes, groups=g["groups"])


class QModel(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        geo = spec.geometry()
        self.layers = nn.ModuleList(QLayer(g, f, spec.scaling == "per_output")
                                    for g, f in zip(geo, spec.layer_formats()))
        n_conv = len(spec.conv_names())
        # pruning: rows zeroed when frozen (the convs, or fc1) and the layer whose input columns are gated
        self._rows = list(range(n_conv)) if spec.kind == "cnn" else [0]
        self._gate = n_conv if spec.kind == "cnn" else 1
        self._col_rep = geo[n_conv - 1]["out_shape"][1] ** 2 if spec.kind == "cnn" else 1
        if spec.prune_keep:
            self.mask = nn.Parameter(torch.ones(geo[0]["n_out"]))
        self.register_buffer("keep", torch.ones(geo[0]["n_out"], dtype=torch.bool))
        self.register_buffer("frozen", torch.tensor(False))
        # the buffer is what checkpoints keep; this bool mirrors it so the hot path reads no tensor
        # (a tensor read would split a torch.compile graph)
        self.pruned = False
        self.fused_requant = False      # train.make_step turns it on for compiled CNN training
        self.register_load_state_dict_post_hook(lambda m, _: setattr(m, "pruned", bool(m.frozen)))
        self.update_clipping(fresh=True)
        # learnable temperature, initialised so that the first logits have std ~ 1 (activations ~32)
        with torch.no_grad():
            codes, _ = self.layers[-1].quant(self.layers[-1].weight)
            rms = float(codes.pow(2).mean().sqrt().clamp_min(1.0))
        self.logit_log_scale = nn.Parameter(torch.tensor(-math.log(32 * rms * math.sqrt(geo[-1]["n_in"]))))

    # ---- weights -------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        return [layer.g["name"] for layer in self.layers]

    @property
    def logit_scale(self) -> float:
        """The positive constant forward() multiplies the integer logits by."""
        return float(torch.exp(self.logit_log_scale.detach()))

    def _weight(self, i: int) -> Tensor:
        w = self.layers[i].weight
        if i == self._gate and hasattr(self, "mask"):     # soft (or frozen 0/1) gate on input columns
            w = w * self.mask.repeat_interleave(self._col_rep)
        return w

    def _codes(self) -> list[tuple[Tensor, Tensor]]:
        out = []
        for i, layer in enumerate(self.layers):
            codes, k = layer.quant(self._weight(i))
            if self.pruned:                                # pruned units output exactly 0
                if i in self._rows:
                    codes = codes * self.keep.to(codes.dtype).view(-1, *[1] * (codes.dim() - 1))
                if i == self._gate:
                    codes = codes * self.keep.repeat_interleave(self._col_rep).to(codes.dtype)
            out.append((codes, k))
        return out

    @torch.no_grad()
    def update_clipping(self, fresh: bool = False) -> dict[str, Any]:
        """Recompute every clip from the current weights (call at the start of each epoch).

        Per-output clips are rounded to powers of two with hysteresis against the current ones
        (quant.pow2_clip); `fresh` drops the hysteresis.
        """
        log: dict[str, Any] = {}
        for i, layer in enumerate(self.layers):
            w, rows = self._weight(i), None
            if self.pruned:                                # pruned weights must not skew the clip
                if i == self._gate:
                    w = w[:, self.keep.repeat_interleave(self._col_rep)]
                if i in self._rows:
                    rows = self.keep
                    w = w[rows]
            c = compute_clip(w, layer.fmt, self.spec.clip, layer.per_output, self.spec.prop_scale)
            if rows is not None and layer.per_output:    # pruned rows get a harmless small clip
                c = torch.full_like(layer.clip, float(c.min())).masked_scatter(rows, c)
            if layer.per_output:
                c = pow2_clip(c, None if fresh else layer.clip)[0]
            layer.clip.copy_(c)
            log[layer.g["name"]] = c.tolist() if c.dim() else float(c)
        return log

    # ---- pruning -------------------------------------------------------------------------
    def prune_penalty(self) -> Tensor:
        """|mask|_1 while the mask is soft, else 0; the caller adds prune.l1 * this to the loss."""
        if not hasattr(self, "mask") or self.pruned:
            return torch.zeros((), device=self.keep.device)
        return self.mask.abs().sum()

    @torch.no_grad()
    def apply_pruning(self, keep: int | None = None) -> list[int]:
        """Freeze a 0/1 mask keeping the `keep` largest |mask| units (ties: lower index); returns them."""
        keep = self.spec.prune_keep if keep is None else keep
        if not hasattr(self, "mask") or not 1 <= keep <= self.mask.numel():
            raise ValueError(f"prune.keep: cannot keep {keep} units (allowed: 1 to the unit count, "
                             "with prune.keep > 0 in the spec)")
        order = torch.argsort(-self.mask.abs(), stable=True)[:keep]
        self.keep.zero_()
        self.keep[order] = True
        self.mask.copy_(self.keep.float())
        self.mask.requires_grad_(False)
        self.frozen.fill_(True)
        self.pruned = True
        return sorted(order.tolist())

    # ---- evaluation ----------------------------------------------------------------------
    def _x0(self, pixels: Tensor) -> Tensor:
        n = self.spec.image_size
        p = pixels.to(torch.int64).reshape(-1, 1, n, n)
        return (p >> 1) - self.spec.input_zero

    def forward(self, pixels: Tensor, scaled: bool = True) -> Tensor:
        """Float logits = exact integer logits * logit_scale, with straight-through gradients.

        scaled=False returns the integer logits themselves (as exact floats): the same values and
        argmax as int_eval, several times faster, for the per-epoch test curve.
        """
        x = self._x0(pixels).to(torch.float32)
        x = x.flatten(1) if self.spec.kind == "fc" else _channels_last(x)
        s = self.spec
        for i, ((codes, k), layer) in enumerate(zip(self._codes(), self.layers)):
            g = layer.g
            if g["kind"] == "fc" and x.dim() > 2:
                x = x.flatten(1)                             # channel-major, CONTRACT §6
            acc = _apply(x.to(layer.dtype), codes.to(layer.dtype), g)
            if layer.fmt != "none" and acc.is_cuda:  # exact on CPU; undoes GPU conv algorithms' tiny errors
                acc = acc.detach().round() + (acc - acc.detach())
            if layer.per_output:
                acc = acc * torch.exp2(k.to(acc.dtype)).view(-1, *[1] * (acc.dim() - 2))
            if i == len(self.layers) - 1:
                return (acc * torch.exp(self.logit_log_scale)).to(torch.float32) if scaled else acc
            y = F.max_pool2d(acc, 2) if g["pool"] else acc
            x, _ = requant(y, s.norm, s.norm_eps, self.fused_requant)
            x = x.to(torch.float32)
        raise AssertionError("unreachable: the last layer returns")

    @torch.no_grad()
    def int_eval(self, pixels: Tensor) -> IntResult:
        """The exact integer reference of CONTRACT.md (int64 tensors, integer shifts)."""
        self._check_exportable()
        x = self._x0(pixels)
        acts: list[tuple[str, Tensor]] = [("input", x.reshape(x.shape[0], -1) if self.spec.kind == "fc" else x)]
        shifts: list[tuple[str, Tensor]] = []
        for i, ((codes, k), layer) in enumerate(zip(self._codes(), self.layers)):
            g, c = layer.g, codes.detach()
            if g["kind"] == "fc":
                x = x.reshape(x.shape[0], -1)
            # CUDA has no int64 matmul: integer sums in float are exact in float32 below 2^24 (the
            # layer's dtype says which) and always in float64; CUDA convs may use TF32, so float64 there
            dt = torch.float64 if x.is_cuda else layer.dtype
            acc = _apply(x.to(dt), c.to(dt), g).round().to(torch.int64)
            kv = k.view(-1, *[1] * (acc.dim() - 2))
            if i == len(self.layers) - 1:
                logits = acc * (1 << kv)                     # mathematical acc * 2^k
                acts.append((g["name"], logits))
                return IntResult(logits, acts, shifts)
            y = acc.clamp_min(0) << kv
            if g["pool"]:
                y = F.max_pool2d(y.double(), 2).to(torch.int64)
            x, sh = shiftnorm(y)
            acts.append((g["name"], x))
            shifts.append((g["name"], sh))
        raise AssertionError("unreachable: the last layer returns")

    def _check_exportable(self) -> None:
        bad = [l.g["name"] for l in self.layers if not FORMATS[l.fmt].exportable]
        if bad:
            raise ValueError(f"quant.formats: layers {bad} use 'none' (float weights), which has no "
                             "integer form; int_eval/export need an integer format "
                             f"(allowed: {', '.join(f for f in FORMATS if f != 'none')})")

    @torch.no_grad()
    def code_entropy(self) -> dict[str, float]:
        return {l.g["name"]: code_entropy(c) for l, (c, _) in zip(self.layers, self._codes())}

    @torch.no_grad()
    def export_layers(self) -> list[dict[str, Any]]:
        """Everything an exporter needs per weight layer, with pruned units dropped (CONTRACT §7)."""
        self._check_exportable()
        pruned = self.pruned
        keep = self.keep.cpu().numpy()
        out = []
        for i, (layer, (codes, k)) in enumerate(zip(self.layers, self._codes())):
            g = dict(layer.g)
            c, kk = codes.detach().to(torch.int64).cpu().numpy(), k.cpu().numpy()
            if pruned and i in self._rows:
                c, kk = c[keep], kk[keep]
            if pruned and i == self._gate:
                c = c[:, np.repeat(keep, self._col_rep)]
            if pruned and g["kind"] == "pwconv":            # its inputs are the kept channels only
                c = c[:, keep]
            if pruned and self.spec.kind == "cnn" and g["kind"] != "fc":
                n_keep = int(keep.sum())
                g.update(n_out=n_keep, groups=n_keep if g["kind"] == "dwconv" else 1,
                         in_shape=(g["in_shape"][0] if g["kind"] == "conv" else n_keep, *g["in_shape"][1:]),
                         out_shape=(n_keep, *g["out_shape"][1:]))
            g.update(n_out=c.shape[0], n_in=int(np.prod(c.shape[1:])))
            if g["kind"] == "fc":
                g.update(in_shape=(c.shape[1],), out_shape=(c.shape[0],))
            bound = layer_bound(g["n_in"], layer.fmt, int(kk.max()))
            if bound > ACC_LIMIT:
                raise ValueError(f"export: layer {g['name']}: accumulator bound {bound} exceeds 2^31-2^24")
            g.update(format=layer.fmt, codes=c, out_shifts=kk.astype(np.int64), requant=i < len(self.layers) - 1,
                     bound=bound, flatten_from=(self.layers[i - 1].g["out_shape"] if i and g["kind"] == "fc"
                                                and self.layers[i - 1].g["kind"] != "fc" else None))
            if g["flatten_from"] is not None and pruned:
                g["flatten_from"] = (int(keep.sum()), *g["flatten_from"][1:])
            out.append(g)
        return out

    def export_model(self) -> dict[str, Any]:
        s = self.spec
        return dict(kind=s.kind, image_size=s.image_size, input_zero=s.input_zero,
                    num_classes=s.num_classes, layers=self.export_layers())


def build_model(spec: ModelSpec) -> QModel:
    """Validate the spec and build its QAT model (weights from torch's default init under the caller's seed)."""
    problems = spec.validate()
    if problems:
        raise ValueError("invalid model spec:\n  " + "\n  ".join(problems))
    return QModel(spec)
