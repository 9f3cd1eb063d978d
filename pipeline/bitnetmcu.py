"""Import of BitNetMCU checkpoints (github.com/cpldcpu/BitNetMCU) as trained-model artifacts.

A BitNetMCU .pth is a bare state_dict: per layer a float `weight` and the clipping scalar `s`. Its
exporter turns each weight into the integer its C engine multiplies by, through `weight_quant`
(a scale per QuantType from s) and an encoding per type. `bitnet_codes` computes those integers with
the same float32 operations, so they are exactly BitNetMCU's. They go into a QModel whose quantizer
returns them unchanged (weight = code, clip = the format's scale_per_clip, i.e. scale 1), and that
model flows through export and verify like a trained one.

Two steps: `doit import src=PATH.pth` reads the file, infers the model and writes a config
(`write_config`); with `import.src` set, this module's `run` implements the train stage: it converts instead of training.
BitNetMCU's FC arithmetic after the input (ReLU, ShiftNorm with round-half-up, int32 sums) is our
contract's; its input (per-image absmax int8 of the normalised image) and its CNN's fixed `>> 4`
conv path are not, so accuracies can differ slightly there.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from contract.errors import UserError
from contract.formats import FORMATS, NF4_CODES, NF4_LEVELS
from contract.spec import ModelSpec, model_spec
from pipeline.config import load as load_config
from pipeline.models import QModel, build_model
from pipeline.store import file_sha256

# BitNetMCU's transforms.Normalize((0.1307,), (0.3081,)): x = 0 at pixel 0.1307 * 255 = 33.3. Our input
# x0 = (p >> 1) - Z is 0 at p = 2Z, so Z = round(33.3 / 2) = 17 puts both zero points together.
MNIST_MEAN = 0.1307
INPUT_ZERO = round(MNIST_MEAN * 255 / 2)
NUM_CLASSES = 10            # our data stage is MNIST

# BitNetMCU QuantType -> our format with the same integer values (its Binary centres the weights
# on their mean, as binarybalanced does). BinarySym, 5bitsym and None cannot be exported by BitNetMCU.
QUANT_TYPES = {"Binary": "binarybalanced", "Ternary": "ternary", "2bitsym": "2bitsym", "4bit": "4bit",
               "4bitsym": "4bitsym", "8bit": "8bit", "FP130": "fp130", "NF4": "nf4"}
FORMAT_TO_QUANT = {f: q for q, f in QUANT_TYPES.items()}
_BPW = {"2bitsym": 2, "4bit": 4, "4bitsym": 4, "8bit": 8}
_NEEDS_S = ("2bitsym", "4bit", "4bitsym", "8bit", "FP130", "NF4")   # Binary, Ternary ignore s


class CheckpointError(UserError):
    pass


@dataclass(frozen=True)
class Slot:
    prefix: str                 # state_dict name of the layer: PREFIX.weight, PREFIX.s
    role: str                   # conv1 | dw | fc
    optional: bool = False


# Layer names of BitNetMCU's models.py (nn.Sequential indices) and of its 2024 FC checkpoints.
LAYOUTS: dict[str, tuple[Slot, ...]] = {
    "CNNMNIST": (Slot("model.0", "conv1"), Slot("model.2", "dw"), Slot("model.5", "dw"), Slot("model.9", "fc"),
                 Slot("model.11", "fc"), Slot("model.fc3", "fc", True), Slot("classifier", "fc")),
    "FCMNIST": (Slot("model.1", "fc"), Slot("model.3", "fc"), Slot("model.fc3", "fc", True),
                Slot("classifier", "fc")),
    "FCMNIST-2024": (Slot("fc1", "fc"), Slot("fc2", "fc"), Slot("fc3", "fc", True), Slot("fcl", "fc")),
}


@dataclass
class Checkpoint:
    path: Path
    layout: str
    layers: list[tuple[str, Tensor, float | None]]   # (state_dict prefix, float32 weight, s or None)
    kind: str
    widths: list[int]
    cnn_channels: int
    image_size: int


def _err(path: Path, msg: str) -> CheckpointError:
    return CheckpointError(f"{path}: {msg}")


def _load_state_dict(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise _err(path, "no such file (allowed: a BitNetMCU .pth state_dict)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and weights-only errors of many types
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        if "weights_only" in first or "Weights only load failed" in first:
            first = "it holds Python objects besides tensors, which are not loaded (code could run)"
        raise _err(path, f"cannot be read as a state_dict: {first} (allowed: a file written by "
                   "torch.save(model.state_dict()) in BitNetMCU)") from None
    if not isinstance(sd, dict) or not sd:
        raise _err(path, f"holds a {type(sd).__name__}, not a state_dict (a mapping of layer names to tensors)")
    for k, v in sd.items():
        if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise _err(path, f"key {k!r}: holds NaN or infinite values (the training diverged; allowed: finite "
                       "weights)")
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise _err(path, f"key {k!r}: {type(v).__name__} {getattr(v, 'dtype', '')} is not a float tensor "
                       "(a state_dict holds float weights)")
    return sd


def _layout(path: Path, sd: dict[str, Any]) -> tuple[str, list[Slot]]:
    names = [n for n, slots in LAYOUTS.items() if all(f"{s.prefix}.weight" in sd for s in slots if not s.optional)]
    if not names:
        raise _err(path, "no BitNetMCU layer layout matches its keys "
                   f"{sorted(sd)[:6]}{' ...' if len(sd) > 6 else ''} (allowed: "
                   + "; ".join(f"{n}: " + ", ".join(f"{s.prefix}.weight" + ("?" if s.optional else "") for s in slots)
                               for n, slots in LAYOUTS.items()) + ")")
    name = names[0]
    slots = [s for s in LAYOUTS[name] if f"{s.prefix}.weight" in sd]
    known = {f"{s.prefix}.{p}" for s in slots for p in ("weight", "s")}
    unknown = [k for k in sd if k not in known]
    if unknown:
        raise _err(path, f"unknown key {unknown[0]!r} for BitNetMCU's {name} (allowed: {', '.join(sorted(known))})")
    return name, slots


def _shape_error(path: Path, key: str, got: tuple[int, ...], want: str) -> CheckpointError:
    return _err(path, f"key {key!r} has shape {list(got)}, expected {want}")


def _cnn_image_size(c: int, n_in: int) -> int | None:
    """Input size N whose conv stack (-2, -2, /2, -2, /2) leaves n_in = C*H*W features; BitNetMCU's 16 first."""
    def feats(n: int) -> int:
        m = ((n - 4) // 2 - 2) // 2
        return c * m * m
    return next((n for n in (16, *range(12, 29)) if feats(n) == n_in), None)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load a BitNetMCU state_dict and infer its model; a bad file raises CheckpointError naming the key."""
    path = Path(path)
    sd = _load_state_dict(path)
    name, slots = _layout(path, sd)
    layers: list[tuple[str, Tensor, float | None]] = []
    for s in slots:
        w = sd[f"{s.prefix}.weight"].to(torch.float32)
        sv = sd.get(f"{s.prefix}.s")
        if sv is not None and sv.numel() != 1:
            raise _err(path, f"key '{s.prefix}.s' has {sv.numel()} values: WScale PerOutput, whose row scales "
                       "BitNetMCU's export drops (allowed: PerTensor checkpoints, one s per layer)")
        layers.append((s.prefix, w, None if sv is None else float(sv.to(torch.float32))))
    convs = [(s, w) for s, (_, w, _) in zip(slots, layers) if s.role != "fc"]
    fcs = [(s, w) for s, (_, w, _) in zip(slots, layers) if s.role == "fc"]
    c = 0
    if convs:
        c = convs[0][1].shape[0]
        for s, w in convs:
            want = (c, 1, 3, 3)
            if tuple(w.shape) != want:
                raise _shape_error(path, f"{s.prefix}.weight", tuple(w.shape),
                                   f"{list(want)} (3x3 {'conv from 1 channel' if s.role == 'conv1' else 'depthwise'}"
                                   f", {c} channels as {convs[0][0].prefix}.weight)")
    first = fcs[0][1]
    if first.dim() != 2:
        raise _shape_error(path, f"{fcs[0][0].prefix}.weight", tuple(first.shape), "[outputs, inputs]")
    n_in = first.shape[1]
    if convs:
        size = _cnn_image_size(c, n_in)
        if size is None:
            raise _shape_error(path, f"{fcs[0][0].prefix}.weight", tuple(first.shape),
                               f"[w1, {c}*H*W] with H*W what the conv stack leaves of an NxN image, N in 12..28 "
                               f"({c * 4} for BitNetMCU's 16x16)")
    else:
        size = math.isqrt(n_in)
        if size * size != n_in or not 8 <= size <= 28:
            raise _shape_error(path, f"{fcs[0][0].prefix}.weight", tuple(first.shape),
                               "[w1, N*N] for an NxN image, N in 8..28 (256 for BitNetMCU's 16x16)")
    prev = first.shape[0]
    for s, w in fcs[1:]:
        if w.dim() != 2 or w.shape[1] != prev:
            raise _shape_error(path, f"{s.prefix}.weight", tuple(w.shape),
                               f"[outputs, {prev}] (the previous layer has {prev} outputs)")
        prev = w.shape[0]
    if prev != NUM_CLASSES:
        raise _shape_error(path, f"{fcs[-1][0].prefix}.weight", tuple(fcs[-1][1].shape),
                           f"[{NUM_CLASSES}, {fcs[-1][1].shape[1]}]: our data stage is MNIST with {NUM_CLASSES} "
                           "classes (EMNIST checkpoints cannot be evaluated here)")
    return Checkpoint(path, name, layers, "cnn" if convs else "fc", [w.shape[0] for _, w in fcs[:-1]], c, size)


def bitnet_codes(w: Tensor, s: float | None, quant: str, where: str = "") -> Tensor:
    """The integers BitNetMCU's C engine multiplies by for weight w (int64, w's shape).

    Its weight_quant in its own float32 order of operations, then its exporter's encoding read as a
    value: symmetric types as 2u (odd), 4bit/8bit as u, FP130 as sign*2^e, NF4 as our NF4 table value
    of the level index, Binary as +1 unless u == -1.
    """
    w = w.to(torch.float32)
    if quant in _NEEDS_S:
        if s is None:
            raise CheckpointError(f"{where}: no clipping scalar s, which QuantType {quant} scales by "
                                  "(allowed: checkpoints that store PREFIX.s; Binary and Ternary need none)")
        st = torch.tensor(s, dtype=torch.float32)
        scale = 128.0 / st if quant == "FP130" else 1.0 / st if quant == "NF4" else (2.0 ** (_BPW[quant] - 1)) / st
    if quant == "Binary":
        u = (w - w.mean()).sign()
        return torch.where(u == -1, -1, 1).to(torch.int64)
    if quant == "Ternary":
        scale = 1.0 / w.abs().mean().clamp_(min=1e-5)
        return (w * scale).round().clamp_(-1, 1).to(torch.int64)
    if quant in ("2bitsym", "4bitsym"):
        lo = -(2 ** (_BPW[quant] - 1))
        u = (w * scale - 0.5).round().clamp_(lo, -lo - 1) + 0.5
        return (2 * u).to(torch.int64)
    if quant == "4bit":
        return torch.floor((w * scale - 0.01).round().clamp_(-8, 7) + 0.01).to(torch.int64)
    if quant == "8bit":
        return (w * scale).round().clamp_(-128, 127).to(torch.int64)
    if quant == "FP130":
        if bool((w == 0).any()):
            raise CheckpointError(f"{where}: a weight is exactly 0, which FP130 cannot encode "
                                  "(BitNetMCU's export takes log2(0)); allowed: nonzero FP130 weights")
        e = (w * scale).abs().log2().floor().clamp_(0, 7)
        return (w.sign() * e.exp2()).to(torch.int64)
    if quant == "NF4":
        levels = torch.tensor(NF4_LEVELS, dtype=torch.float32)
        idx = (w * scale).unsqueeze(-1).sub(levels).abs().argmin(-1)
        return torch.tensor(NF4_CODES, dtype=torch.int64)[idx]
    raise CheckpointError(f"{where}: QuantType {quant!r} cannot be exported (allowed: {', '.join(QUANT_TYPES)})")


def to_qmodel(ck: Checkpoint, spec: ModelSpec) -> QModel:
    """Our model holding exactly BitNetMCU's codes; the spec must describe the checkpoint's model."""
    got = dict(kind=ck.kind, widths=tuple(ck.widths), image_size=ck.image_size, num_classes=NUM_CLASSES,
               **({"cnn_channels": ck.cnn_channels} if ck.kind == "cnn" else {}))
    keys = {"kind": "model.kind", "widths": "model.widths", "image_size": "data.image_size",
            "cnn_channels": "model.cnn_channels", "num_classes": "model.num_classes"}
    for field, value in got.items():
        if getattr(spec, field) != value:
            raise _err(ck.path, f"holds a model with {keys[field]} {value!r}, but the config says "
                       f"{getattr(spec, field)!r} (allowed: the checkpoint's own value; `doit import` writes it)")
    formats = spec.layer_formats()
    bad = [f for f in formats if f not in FORMAT_TO_QUANT]
    if bad:
        raise CheckpointError(f"quant.formats: {bad[0]} has no BitNetMCU QuantType (allowed: "
                              f"{', '.join(FORMAT_TO_QUANT)})")
    torch.manual_seed(0)              # the random init is overwritten; seeding keeps model.pt reproducible
    model = build_model(spec)
    with torch.no_grad():
        for layer, (prefix, w, s), fmt in zip(model.layers, ck.layers, formats):
            codes = bitnet_codes(w, s, FORMAT_TO_QUANT[fmt], f"{ck.path}: layer {prefix} ({fmt})")
            layer.weight.copy_(codes.reshape(layer.weight.shape).to(layer.weight.dtype))
            layer.clip.fill_(FORMATS[fmt].scale_per_clip)
        for (prefix, w, s), (codes, _), fmt in zip(ck.layers, model._codes(), formats):
            want = bitnet_codes(w, s, FORMAT_TO_QUANT[fmt])
            if not torch.equal(codes.detach().to(torch.int64).reshape(want.shape), want):
                raise AssertionError(f"layer {prefix}: our {fmt} quantizer does not reproduce its codes")
    return model.eval()


# ---- doit import: checkpoint -> config ----------------------------------------------------------
def _quant_type(path: Path, quant: str | None) -> str:
    allowed = ", ".join(QUANT_TYPES)
    if quant:
        match = [q for q in QUANT_TYPES if q.lower() == quant.lower()]
        if not match:
            raise CheckpointError(f"quant={quant}: unknown BitNetMCU QuantType (allowed: {allowed})")
        return match[0]
    # BitNetMCU's run names carry it: ..._BitMnist_[PerTensor_]<QuantType>_...
    m = re.search(r"_BitMnist_(?:PerTensor_|PerOutput_)?([A-Za-z0-9]+)_", path.name)
    found = [q for q in QUANT_TYPES if m and q.lower() == m.group(1).lower()]
    if not found:
        raise CheckpointError(f"quant: {path} does not store its QuantType and its name does not tell it; "
                              f"give quant=TYPE (allowed: {allowed})")
    return found[0]


def _ints(var: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in str(text).split(",")]
    except ValueError:
        raise CheckpointError(f"{var}={text}: not a comma-separated list of integers (e.g. {var}=64,64,64)") from None


def _flow(v: Any) -> str:
    """One YAML value on one line (lists as [a, b])."""
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def config_tree(ck: Checkpoint, quant: str) -> dict[str, Any]:
    """The config sections of an imported model (BitNetMCU's CNN: 8-bit convs, 2-bit fc1, then quant)."""
    fmt = QUANT_TYPES[quant]
    formats = ["8bit"] * 3 + ["2bitsym"] + [fmt] * len(ck.widths) if ck.kind == "cnn" else [fmt]
    model: dict[str, Any] = {"kind": ck.kind, "widths": ck.widths, "input_zero": INPUT_ZERO}
    if ck.kind == "cnn":
        model["cnn_channels"] = ck.cnn_channels
    multiplier = not all(FORMATS[f].multiplier_free for f in formats)
    return {"data": {"image_size": ck.image_size}, "model": model, "quant": {"formats": formats},
            "mcu": {"target": "ch32v002" if multiplier else "ch32v003"},
            "import": {"src": str(ck.path.resolve())}}


def write_config(src: str | Path, name: str | None = None, quant: str | None = None,
                 widths: str | None = None, cnn_width: str | None = None,
                 folder: str | Path = "configs/imported") -> Path:
    """Infer the config of a BitNetMCU checkpoint, check it converts, and write FOLDER/NAME.yaml."""
    ck = read_checkpoint(src)
    want_w, want_c = _ints("widths", widths), _ints("cnn_width", cnn_width)
    if want_w is not None and want_w != ck.widths:
        raise _err(ck.path, f"widths={widths}: the checkpoint's hidden widths are "
                   f"{','.join(map(str, ck.widths))} (allowed: those, or leave widths out)")
    if want_c is not None and (ck.kind != "cnn" or want_c != [ck.cnn_channels]):
        raise _err(ck.path, f"cnn_width={cnn_width}: the checkpoint is {ck.layout}"
                   + (f" with {ck.cnn_channels} channels" if ck.kind == "cnn" else " (no convs)")
                   + " (allowed: its own channel count, or leave cnn_width out)")
    qt = _quant_type(ck.path, quant)
    tree = config_tree(ck, qt)
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "_", ck.path.stem)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise CheckpointError(f"name={name}: not a plain file name (allowed: letters, digits, _ . -)")
    if Path(folder).exists() and not Path(folder).is_dir():
        raise CheckpointError(f"dir={folder}: is a file, not a folder (allowed: a folder for the config, made if "
                              "missing)")
    out = Path(folder) / f"{name}.yaml"
    text = (f"# Imported by `doit import` from BitNetMCU checkpoint {ck.path.name}\n"
            f"# ({ck.layout}, QuantType {qt}, sha256 {file_sha256(ck.path)[:16]}...). The train stage converts it\n"
            f"# instead of training. input_zero {INPUT_ZERO}: BitNetMCU normalises by (x - {MNIST_MEAN}) / 0.3081, "
            f"zero at pixel\n# {MNIST_MEAN * 255:.1f}; our x0 = (p >> 1) - Z is zero at p = 2Z.\n"
            + "".join(f"{sec}:\n" + "".join(f"  {k}: {_flow(v)}\n" for k, v in keys.items())
                      for sec, keys in tree.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    try:
        cfg = load_config(tmp)         # the schema's own checks, then a full conversion, before publishing
        to_qmodel(ck, model_spec(cfg))
    except BaseException:
        tmp.unlink()
        raise
    os.replace(tmp, out)
    return out


# ---- train stage: conversion instead of training ------------------------------------------------
def run(ctx) -> dict:
    """The train stage's artifact (model.pt, test predictions, summary) for `import.src`: this module
    implements the train stage when that key is set (pipeline/graph.py)."""
    from pipeline.stages import train as stage
    from pipeline.stages.data import mnist_test
    from pipeline.train import evaluate

    cfg = ctx.cfg
    src = Path(cfg["import.src"])
    spec = model_spec(cfg)
    model = to_qmodel(read_checkpoint(src), spec)
    images, labels = mnist_test(ctx.input("data"))
    test_x, test_y = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
    acc, preds = evaluate(model, test_x, test_y)
    torch.save({"model": model.state_dict(), "spec": spec.to_dict()}, ctx.out / stage.MODEL)
    np.save(ctx.out / stage.PREDICTIONS, preds.astype(np.uint8))
    (ctx.out / stage.METRICS).write_text("[]\n")   # no training epochs
    weights = sum(int(np.prod(lay["codes"].shape)) for lay in model.export_layers())
    ctx.log(f"imported {src.name}: {spec.kind} {list(spec.widths)} {list(spec.formats)}, "
            f"test(int) {acc:.4f}")
    return {
        "test_accuracy_int": round(acc, 6),
        "test_errors": int(round((1 - acc) * len(test_y))),
        "test_images": len(test_y),
        "imported_from": str(src),
        "imported_sha256": file_sha256(src),
        "epochs": 0,
        "weights": weights,
        "entropy_bits": model.code_entropy(),
    }


def import_command(src: str | None, name: str | None = None, quant: str | None = None,
                   widths: str | None = None, cnn_width: str | None = None, folder: str | None = None) -> Path:
    """`doit import`: write the config and say how to run it."""
    if not src:
        raise CheckpointError("src: missing (usage: doit import src=PATH.pth [name=NAME] [quant=TYPE] "
                              "[widths=W1,W2,..] [cnn_width=C] [dir=FOLDER])")
    out = write_config(src, name, quant, widths, cnn_width, folder or "configs/imported")
    tree = yaml.safe_load(out.read_text())
    print(f"wrote {out}: {tree['model']['kind']} {tree['model']['widths']} {tree['quant']['formats']}"
          f", {tree['data']['image_size']}x{tree['data']['image_size']} input")
    print(f"next: doit cfg={out} verify")
    return out

