"""Torch-free description of a model: layer geometry, the accumulator bound, validation, config mapping.

Config validation runs on every `doit` call, so nothing here may import torch (about 2 s to import).
Training (pipeline/quant.py, pipeline/models.py) and export build on these definitions.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from contract.formats import FORMATS

MAX_OUT_SHIFT = 7            # per-output left shifts k[o] lie in [0, 7] (CONTRACT §3)
ACC_LIMIT = 2**31 - 2**24    # |accumulator| bound that keeps ShiftNorm's rounding inside int32
F32_EXACT = 2**24            # float32 sums of integers are exact below this
IMAGE_SIZES = (8, 28)        # N of the N x N input: smallest and largest
INPUT_ZEROS = (0, 127)       # Z of the input map, so x0 = (p >> 1) - Z stays int8
NORMS = ("rms", "lin", "batchnorm")
CLIPS = ("prop", "octav")
SCALINGS = ("per_tensor", "per_output")


def layer_bound(n_in: int, fmt: str, max_shift: int) -> int:
    """Largest |accumulator| of a layer (CONTRACT §3): n_in * 127 * max|code| * 2^max_shift."""
    return n_in * 127 * FORMATS[fmt].max_abs_code * 2**max_shift


KINDS = ("fc", "cnn")
HIDDEN_LAYERS = {"fc": (2, 4), "cnn": (1, 3)}   # hidden FC layers a model of each kind may have (fewest, most)


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "fc"                      # model.kind: 'fc' | 'cnn'
    image_size: int = 16                  # data.image_size: N of the NxN input
    widths: tuple[int, ...] = (64, 64, 64)  # model.widths: hidden FC widths (fc 2..4, cnn 1..3)
    cnn_channels: int = 0                 # model.cnn_channels: C (cnn only)
    mix: bool = False                     # model.mix: a 1x1 channel-mixing conv pw1 after dw1 (cnn only)
    formats: tuple[str, ...] = ("4bitsym",)  # quant.formats: one per weight layer, or one for all
    scaling: str = "per_tensor"           # quant.scaling
    clip: str = "octav"                   # quant.clip
    prop_scale: float = 0.25              # quant.prop_scale
    norm: str = "rms"                     # quant.norm: backward surrogate of ShiftNorm
    norm_eps: float = 1e-5                # quant.norm_eps
    input_zero: int = 16                  # model.input_zero: Z in x0 = (p >> 1) - Z
    num_classes: int = 10
    prune_keep: int = 0                   # prune.keep: units kept (0 = no pruning)
    prune_l1: float = 5e-4                # prune.l1: L1 weight on the mask until prune.epoch
    prune_epoch: int = 0                  # prune.epoch: when the caller calls apply_pruning

    def __post_init__(self) -> None:      # configs hand over lists; keep the spec hashable
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "formats", (self.formats,) if isinstance(self.formats, str)
                           else tuple(self.formats))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(**d)

    def n_layers(self) -> int:
        return len(self.widths) + 1 + ((4 if self.mix else 3) if self.kind == "cnn" else 0)

    def conv_names(self) -> tuple[str, ...]:
        """The conv layers of a cnn, in order (none for an fc model)."""
        if self.kind != "cnn":
            return ()
        return ("conv1", "dw1", "pw1", "dw2") if self.mix else ("conv1", "dw1", "dw2")

    def layer_formats(self) -> tuple[str, ...]:
        f = self.formats
        return f * self.n_layers() if len(f) == 1 else f

    def geometry(self) -> list[dict[str, Any]]:
        """Per weight layer: name, kind, n_out, n_in (terms per output), groups, in/out shapes, pool."""
        geo: list[dict[str, Any]] = []
        if self.kind == "cnn":
            c, n = self.cnn_channels, self.image_size
            for name, kind, pool in (("conv1", "conv", False), ("dw1", "dwconv", True), ("dw2", "dwconv", True)):
                m = n - 2
                out = m // 2 if pool else m
                geo.append(dict(name=name, kind=kind, n_out=c, n_in=9, groups=1 if kind == "conv" else c,
                                in_shape=(1 if kind == "conv" else c, n, n), out_shape=(c, out, out), pool=pool))
                n = out
                if name == "dw1" and self.mix:   # the depthwise layers mix no channels; pw1 does, 1x1
                    geo.append(dict(name="pw1", kind="pwconv", n_out=c, n_in=c, groups=1,
                                    in_shape=(c, n, n), out_shape=(c, n, n), pool=False))
            feats = c * n * n
        else:
            feats = self.image_size ** 2
        dims = [feats, *self.widths, self.num_classes]
        for i in range(len(dims) - 1):
            geo.append(dict(name=f"fc{i + 1}", kind="fc", n_out=dims[i + 1], n_in=dims[i], groups=1,
                            in_shape=(dims[i],), out_shape=(dims[i + 1],), pool=False))
        return geo

    def validate(self) -> list[str]:
        """Problems as `key: problem (allowed: ...)`; empty when the spec is usable."""
        p: list[str] = []

        def bad(key: str, prob: str, allowed: str) -> None:
            p.append(f"{key}: {prob} (allowed: {allowed})")

        if self.kind not in KINDS:
            bad("model.kind", f"unknown value {self.kind!r}", ", ".join(KINDS))
            return p
        if not IMAGE_SIZES[0] <= self.image_size <= IMAGE_SIZES[1]:
            bad("data.image_size", f"{self.image_size} is out of range", f"{IMAGE_SIZES[0]} to {IMAGE_SIZES[1]}")
        lo, hi = HIDDEN_LAYERS[self.kind]
        if not lo <= len(self.widths) <= hi or any(w < 1 for w in self.widths):
            bad("model.widths", f"{list(self.widths)} has {len(self.widths)} entries or a width < 1",
                f"{lo} to {hi} widths >= 1 for model.kind {self.kind}")
        if self.kind == "cnn" and self.cnn_channels < 1:
            bad("model.cnn_channels", f"{self.cnn_channels} is out of range", "an integer >= 1 for a cnn")
        if self.mix and self.kind != "cnn":
            bad("model.mix", "true needs model.kind cnn", "false for model.kind fc")
        for key, v, ok in (("quant.scaling", self.scaling, SCALINGS), ("quant.clip", self.clip, CLIPS),
                           ("quant.norm", self.norm, NORMS)):
            if v not in ok:
                bad(key, f"unknown value {v!r}", ", ".join(ok))
        for key, v in (("quant.prop_scale", self.prop_scale), ("quant.norm_eps", self.norm_eps)):
            if not (math.isfinite(v) and v > 0):
                bad(key, f"{v!r} must be positive", "a finite number > 0")
        if not INPUT_ZEROS[0] <= self.input_zero <= INPUT_ZEROS[1]:
            bad("model.input_zero", f"{self.input_zero} is out of range", f"{INPUT_ZEROS[0]} to {INPUT_ZEROS[1]}")
        if self.num_classes < 2:
            bad("model.num_classes", f"{self.num_classes} is out of range", "an integer >= 2")
        for f in self.formats:
            if f not in FORMATS:
                bad("quant.formats", f"unknown format {f!r}", ", ".join(FORMATS))
        if len(self.formats) not in (1, self.n_layers()):
            bad("quant.formats", f"{len(self.formats)} names for {self.n_layers()} weight layers",
                f"1 name for all layers, or {self.n_layers()} in order"
                + (f" ({', '.join(self.conv_names())}, then fc layers)" if self.kind == "cnn" else ""))
        if p:
            return p
        geo = self.geometry()
        if self.kind == "cnn" and geo[len(self.conv_names()) - 1]["out_shape"][1] < 1:
            bad("data.image_size", f"{self.image_size} leaves no pixels after the conv stack "
                "(each 3x3 conv -2, each pool /2)", "12 to 28 for model.kind cnn")
            return p
        k = MAX_OUT_SHIFT if self.scaling == "per_output" else 0
        for g, f in zip(geo, self.layer_formats()):
            if f == "none":
                continue
            if layer_bound(g["n_in"], f, k) > ACC_LIMIT:
                key = ("model.widths" if g["name"] not in (*self.conv_names(), "fc1") else
                       "model.cnn_channels" if self.kind == "cnn" else "data.image_size")
                cap = ACC_LIMIT // layer_bound(1, f, k)
                bad(key, f"layer {g['name']} has {g['n_in']} inputs; {g['n_in']}*127*"
                    f"{FORMATS[f].max_abs_code}*2^{k} exceeds the int32 accumulator limit 2^31-2^24",
                    f"n_in <= {cap} for {f} {self.scaling}")
        if self.prune_keep:
            units = self.cnn_channels if self.kind == "cnn" else self.widths[0]
            if not 1 <= self.prune_keep <= units:
                bad("prune.keep", f"{self.prune_keep} is out of range",
                    f"0 (off) or 1 to {units}, the {'CNN channels' if self.kind == 'cnn' else 'first hidden width'}")
        if not (math.isfinite(self.prune_l1) and self.prune_l1 >= 0):
            bad("prune.l1", f"{self.prune_l1!r} is out of range", "a finite number >= 0")
        if self.prune_epoch < 0:
            bad("prune.epoch", f"{self.prune_epoch} is out of range", "an integer >= 0")
        return p

# Config keys of the model description, and the ModelSpec field each fills.
SPEC_KEYS = {
    "model.kind": "kind", "data.image_size": "image_size", "model.widths": "widths",
    "model.cnn_channels": "cnn_channels", "model.mix": "mix", "quant.formats": "formats", "quant.scaling": "scaling",
    "quant.clip": "clip", "quant.prop_scale": "prop_scale", "quant.norm": "norm", "quant.norm_eps": "norm_eps",
    "model.input_zero": "input_zero", "prune.keep": "prune_keep", "prune.l1": "prune_l1",
    "prune.epoch": "prune_epoch",
}


def model_spec(cfg: Mapping[str, Any]) -> ModelSpec:
    return ModelSpec(**{field: cfg[key] for key, field in SPEC_KEYS.items()})


def model_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Config rule: the model the keys describe must be buildable and fit the integer contract."""
    out = []
    for problem in model_spec(values).validate():
        key, _, msg = problem.partition(": ")
        out.append((key, msg))
    return out
