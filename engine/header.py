"""Render a packed model (contract.model.PackedModel) as a self-contained C header for engine/bitmcu.c.

The header holds the packed weight words, the per-output shifts, the bm_layer table, the working
buffers and the bm_model instance, plus a #define for every size the firmware or the cffi glue needs.
Buffer sizes come from the layer shapes (see `layout`). The text is deterministic: same model, same
bytes (no timestamps, no paths). Include it in exactly one translation unit.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from contract.formats import FORMAT_IDS
from contract.model import PackedLayer, PackedModel

OPS = {"fc": "BM_OP_FC", "conv": "BM_OP_CONV", "dwconv": "BM_OP_DWCONV"}
LAYER_BYTES = 32      # sizeof(bm_layer) on a 32-bit target (ilp32 / ilp32e)
MODEL_BYTES = 44      # sizeof(bm_model) on a 32-bit target
_U16 = 0xFFFF


def _fmt_macro(fmt: str) -> str:
    return f"BM_FMT_{fmt.upper()}"


def _fail(msg: str) -> None:
    raise ValueError(f"engine.header: {msg}")


def layout(model: PackedModel) -> dict[str, Any]:
    """Sizes of a packed model, as the header #defines them.

    The conv layers of a CNN stream one channel at a time (CONTRACT §6, "Streaming"), so their
    buffers hold one channel's maps. acc_words: the largest int32 output, of a hidden fc layer (n_out)
    or of the last conv layer on one channel (its (H-2)*(W-2) map before the pool, a pool's odd last row
    and column left out); the final layer writes the caller's logits directly. act_bytes: the largest
    int8 activation held whole: the N*N input, a hidden fc output or the CNN's C*H*W features; a layer's
    input is dead once its int32 outputs exist. chan_bytes: one channel's N*N working map, which the conv
    layers but the last requantize in place (none for a single conv layer). feat_bytes: the last conv
    layer's C*H*W values kept to 8 bits, C exponents and 4 bytes per conv layer (the shifts used and
    measured, and a channel that reached the shift, in this run and the last). ram = 4*acc_words +
    act_bytes + chan_bytes + feat_bytes. trace_act_bytes: x0 plus every requantized output, in order.
    flash: weight words, shift bytes (per_tensor layers store none), and the layer table + model struct
    on a 32-bit target.
    """
    n = int(model.image_size)
    hidden = [lay for lay in model.layers if lay.requant]
    convs = [lay for lay in model.layers if lay.kind != "fc"]
    fcs = [lay for lay in hidden if lay.kind == "fc"]
    out_len = [int(np.prod(lay.out_shape)) for lay in hidden]
    acc = [int(lay.n_out) for lay in fcs]
    if convs:
        h, w = int(convs[-1].in_shape[1]) - 2, int(convs[-1].in_shape[2]) - 2
        acc.append((h - h % 2) * (w - w % 2) if convs[-1].pool else h * w)
    feats = [int(np.prod(convs[-1].out_shape))] if convs else []
    chan_bytes = n * n if len(convs) > 1 else 0
    feat_bytes = feats[0] + int(convs[-1].n_out) + 4 * len(convs) if convs else 0
    shift_bytes = sum(int(lay.n_out) for lay in model.layers if np.asarray(lay.out_shifts).any())
    weight_bytes = sum(4 * int(np.asarray(lay.words).size) for lay in model.layers)
    table_bytes = LAYER_BYTES * len(model.layers) + MODEL_BYTES
    acc_words = max([1, *acc])
    act_bytes = max([n * n, *feats, *(int(lay.n_out) for lay in fcs)])
    return dict(acc_words=acc_words, act_bytes=act_bytes, chan_bytes=chan_bytes, feat_bytes=feat_bytes,
                trace_act_bytes=n * n + sum(out_len), n_shifts=len(hidden),
                ram_bytes=4 * acc_words + act_bytes + chan_bytes + feat_bytes, weight_bytes=weight_bytes,
                shift_bytes=shift_bytes, table_bytes=table_bytes,
                flash_bytes=weight_bytes + shift_bytes + table_bytes)


def format_masks(model: PackedModel) -> dict[str, str]:
    """The BM_FMT_BIT masks of the model's formats, as C expressions: all layers', the fc layers' and the
    conv layers' (the header's BM_MODEL_*FORMATS; a build passes them as BM_CFG_*FORMATS so that only
    those kernels are compiled)."""
    return {"all": _mask(model.layers, ("fc", "conv", "dwconv")), "fc": _mask(model.layers, ("fc",)),
            "conv": _mask(model.layers, ("conv", "dwconv"))}


def _mask(layers: list[PackedLayer], kinds: tuple[str, ...]) -> str:
    """The BM_FMT_BIT mask of the formats of the layers of these kinds, as a C expression (0u when none)."""
    fmts = sorted({lay.format for lay in layers if lay.kind in kinds}, key=FORMAT_IDS.get)
    return "(" + " | ".join(f"BM_FMT_BIT({_fmt_macro(f)})" for f in fmts) + ")" if fmts else "0u"


def _define(name: str, value: Any, comment: str = "") -> str:
    line = f"#define {name} {value}"
    return f"{line:<40}/* {comment} */" if comment else line


def _words_block(words: np.ndarray) -> str:
    vals = [f"0x{int(v):08x}" for v in words]
    return ",\n".join("    " + ", ".join(vals[i:i + 8]) for i in range(0, len(vals), 8))


def _shift_block(k: np.ndarray) -> str:
    vals = [str(int(v)) for v in k]
    return ",\n".join("    " + ", ".join(vals[i:i + 16]) for i in range(0, len(vals), 16))


def _dims(lay: PackedLayer) -> dict[str, int]:
    if lay.kind == "fc":
        return dict(in_c=int(lay.n_in), in_h=1, in_w=1, out_h=1, out_w=1)
    c, h, w = (int(v) for v in lay.in_shape)
    return dict(in_c=c, in_h=h, in_w=w, out_h=int(lay.out_shape[1]), out_w=int(lay.out_shape[2]))


def _check_ranges(model: PackedModel) -> None:
    n = int(model.image_size)
    if len(model.layers) > 255 or int(model.num_classes) > 255 or n * n > _U16:
        _fail(f"the model must have <= 255 layers, <= 255 classes and <= {_U16} pixels; got "
              f"{len(model.layers)}, {model.num_classes}, {n * n}")
    for lay in model.layers:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(lay.name)):
            _fail(f"layer name {lay.name!r} must be a C identifier")
        fields = dict(n_in=int(lay.n_in), n_out=int(lay.n_out), groups=int(lay.groups),
                      row_words=int(lay.row_words), **_dims(lay))
        big = {k: v for k, v in fields.items() if v > _U16}
        if big:
            _fail(f"layer {lay.name}: {big} exceed the uint16 fields of bm_layer (max {_U16})")


def render_header(model: PackedModel) -> str:
    """C header text for a packed model (contract.model.from_export(export_model()))."""
    model.check()
    _check_ranges(model)
    layers = model.layers
    sizes = layout(model)
    n = int(model.image_size)
    formats = sorted({lay.format for lay in layers}, key=FORMAT_IDS.get)
    masks = format_masks(model)
    out = [
        "/* Generated by engine/header.py from a packed bitmcu model; do not edit.",
        f"   {model.kind} model: {n}x{n} input, input_zero {int(model.input_zero)}, "
        f"{int(model.num_classes)} classes, {len(layers)} weight layers.",
        "   Include this header in exactly one translation unit and compile it with engine/bitmcu.c,",
        "   both with the same BM_CFG_* options. Sizes are bytes on a 32-bit target.",
        "",
        "   layer    kind    format          n_in  n_out groups  in_shape      out_shape     words",
    ]
    for lay in layers:
        out.append(f"   {lay.name:<8} {lay.kind:<7} {lay.format:<14} {int(lay.n_in):>6} "
                   f"{int(lay.n_out):>6} {int(lay.groups):>6}  "
                   f"{'x'.join(str(int(v)) for v in lay.in_shape):<13} "
                   f"{'x'.join(str(int(v)) for v in lay.out_shape):<13} {np.asarray(lay.words).size}")
    out += [
        "*/",
        "#ifndef BITMCU_MODEL_H",
        "#define BITMCU_MODEL_H",
        "",
        '#include "bitmcu.h"',
        "",
        "#define BM_MODEL_FORMATS " + masks["all"],
        "#define BM_MODEL_FC_FORMATS " + masks["fc"],
        "#define BM_MODEL_CONV_FORMATS " + masks["conv"],
        _define("BM_MODEL_CNN", int(any(lay.kind != "fc" for lay in layers)),
                "1: conv layers, bm_run needs BM_CFG_CNN 1"),
        "#if BM_MODEL_CNN && !BM_CFG_CNN",
        '#error "bitmcu model: this CNN needs the streaming driver; build bitmcu.c with BM_CFG_CNN 1"',
        "#endif",
    ]
    for f in formats:
        users = ", ".join(lay.name for lay in layers if lay.format == f)
        out += [f"#if !((BM_CFG_FORMATS) & BM_FMT_BIT({_fmt_macro(f)}))",
                f'#error "bitmcu model: format {f} (layers {users}) is not compiled in; '
                f'add BM_FMT_BIT({_fmt_macro(f)}) to BM_CFG_FORMATS"',
                "#endif"]
        for kinds, cfg in ((("fc",), "BM_CFG_FC_FORMATS"), (("conv", "dwconv"), "BM_CFG_CONV_FORMATS")):
            users = ", ".join(lay.name for lay in layers if lay.format == f and lay.kind in kinds)
            if users:
                out += [f"#if !(({cfg}) & BM_FMT_BIT({_fmt_macro(f)}))",
                        f'#error "bitmcu model: format {f} (layers {users}) is left out of {cfg}"',
                        "#endif"]
    names = ", ".join(f'"{lay.name}"' for lay in layers)
    out += [
        "",
        _define("BM_IMAGE_SIZE", n),
        _define("BM_IMAGE_PIXELS", n * n),
        _define("BM_INPUT_ZERO", int(model.input_zero)),
        _define("BM_NUM_CLASSES", int(model.num_classes)),
        _define("BM_N_LAYERS", len(layers)),
        _define("BM_LAYER_NAMES", f"{{{names}}}"),
        _define("BM_N_SHIFTS", sizes["n_shifts"], "requantized layers"),
        _define("BM_ACC_WORDS", sizes["acc_words"], "int32: largest fc output or last conv channel map"),
        _define("BM_ACT_BYTES", sizes["act_bytes"], "int8: largest whole activation, input included"),
        _define("BM_CHAN_BYTES", sizes["chan_bytes"], "int8: one channel's N x N working conv map"),
        _define("BM_FEAT_BYTES", sizes["feat_bytes"], "CNN: 8-bit last conv layer, exponents, 4 B/conv"),
        _define("BM_TRACE_ACT_BYTES", sizes["trace_act_bytes"], "int8: x0 and every requantized output"),
        _define("BM_RAM_BYTES", sizes["ram_bytes"], "static buffers: 4 * acc + act + chan + feat"),
        _define("BM_FLASH_WEIGHT_BYTES", sizes["weight_bytes"], "packed weight words"),
        _define("BM_FLASH_SHIFT_BYTES", sizes["shift_bytes"], "per-output shifts (none when all 0)"),
        _define("BM_FLASH_TABLE_BYTES", sizes["table_bytes"],
                f"{len(layers)} x {LAYER_BYTES} (bm_layer) + {MODEL_BYTES} (bm_model)"),
        _define("BM_FLASH_BYTES", sizes["flash_bytes"], "weights + shifts + table"),
    ]
    for lay in layers:
        words = np.asarray(lay.words)
        out += ["", f"static const uint32_t bm_w_{lay.name}[{words.size}] = {{", _words_block(words), "};"]
        k = np.asarray(lay.out_shifts)
        if k.any():
            out += [f"static const uint8_t bm_k_{lay.name}[{k.size}] = {{", _shift_block(k), "};"]
    out += ["", "/* words, out_shifts, n_in, n_out, groups, in_c, in_h, in_w, out_h, out_w, row_words, op, format,",
            "   pool */",
            f"static const bm_layer bm_layers[{len(layers)}] = {{"]
    for lay in layers:
        d = _dims(lay)
        k = f"bm_k_{lay.name}" if np.asarray(lay.out_shifts).any() else "NULL"
        out += [f"    {{bm_w_{lay.name}, {k}, {int(lay.n_in)}, {int(lay.n_out)}, {int(lay.groups)}, "
                f"{d['in_c']}, {d['in_h']}, {d['in_w']}, {d['out_h']}, {d['out_w']}, {int(lay.row_words)}, "
                f"{OPS[lay.kind]}, {_fmt_macro(lay.format)}, {1 if lay.pool else 0}}},"]
    out += [
        "};",
        "",
        "static int32_t bm_acc_buf[BM_ACC_WORDS];",
        "static int8_t bm_act_buf[BM_ACT_BYTES];",
        *(["static int8_t bm_chan_buf[BM_CHAN_BYTES];"] if sizes["chan_bytes"] else []),
        *(["static uint8_t bm_feat_buf[BM_FEAT_BYTES];   /* its last bytes carry shifts from run to run */"]
          if sizes["feat_bytes"] else []),
        "",
        "static const bm_model bm_net = {bm_layers, bm_acc_buf, bm_act_buf, "
        f"{'bm_chan_buf' if sizes['chan_bytes'] else 'NULL'}, {'bm_feat_buf' if sizes['feat_bytes'] else 'NULL'},",
        "                                BM_ACC_WORDS, BM_ACT_BYTES, BM_CHAN_BYTES, BM_FEAT_BYTES, BM_IMAGE_PIXELS,",
        "                                BM_N_LAYERS, BM_IMAGE_SIZE, BM_INPUT_ZERO, BM_NUM_CLASSES};",
        "#define BM_MODEL (&bm_net)",
        "",
        "#endif /* BITMCU_MODEL_H */",
        "",
    ]
    return "\n".join(out)
