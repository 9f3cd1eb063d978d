"""The engine's memory layout of a packed model: the buffer sizes the streaming driver needs and the flash
the model takes, computed once at export (CONTRACT §6). The C header (engine/header.py), the size gates and
the Python twin of the streaming driver (refimpl/stream.py) all read them from here. numpy only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from contract.model import PackedModel

LAYER_BYTES = 32      # sizeof(bm_layer) on a 32-bit target (ilp32 / ilp32e)
MODEL_BYTES = 48      # sizeof(bm_model) on a 32-bit target


def layout(model: PackedModel) -> dict[str, Any]:
    """Sizes of a packed model, as the header #defines them.

    The conv layers of a CNN stream one channel at a time (CONTRACT §6, "Streaming"), so their
    buffers hold one channel's maps. map_words: the last conv layer's int32 map on one channel (its
    (H-2)*(W-2) values before the pool, a pool's odd last row and column left out; 0 without conv layers).
    feat_bytes: the last conv layer's C*H*W values kept to 8 bits, C exponents and 2 bytes per conv layer
    (the shift used and the shift measured). acc_words: the int32 region that holds the largest hidden fc
    output (n_out; the final layer writes the caller's logits directly) and, for a CNN, first the map and then
    feat, which are dead once the fc layers run. act_bytes: the largest int8 activation held whole: the N*N
    input, a hidden fc output or the CNN's C*H*W features; a layer's input is dead once its int32 outputs
    exist. chan_bytes: one channel's N*N working map, which the conv layers but the last requantize in place
    (none for a single conv layer). ram = 4*acc_words + act_bytes + chan_bytes. trace_act_bytes: x0 plus every
    requantized output, in order. flash: weight words, shift bytes (per_tensor layers store none), the layer
    table + model struct on a 32-bit target, and a CNN's start state (start_bytes: a shift per conv layer but
    the last, then the C channels' order; none for a single conv layer).
    """
    n = int(model.image_size)
    hidden = [lay for lay in model.layers if lay.requant]
    convs = [lay for lay in model.layers if lay.kind != "fc"]
    fcs = [lay for lay in hidden if lay.kind == "fc"]
    out_len = [int(np.prod(lay.out_shape)) for lay in hidden]
    map_words = 0
    if convs:
        h, w = int(convs[-1].in_shape[1]) - 2, int(convs[-1].in_shape[2]) - 2
        map_words = (h - h % 2) * (w - w % 2) if convs[-1].pool else h * w
    feats = [int(np.prod(convs[-1].out_shape))] if convs else []
    chan_bytes = n * n if len(convs) > 1 else 0
    feat_bytes = feats[0] + int(convs[-1].n_out) + 2 * len(convs) if convs else 0
    shift_bytes = sum(int(lay.n_out) for lay in model.layers if np.asarray(lay.out_shifts).any())
    weight_bytes = sum(4 * int(np.asarray(lay.words).size) for lay in model.layers)
    table_bytes = LAYER_BYTES * len(model.layers) + MODEL_BYTES
    start_bytes = len(convs) - 1 + int(convs[0].n_out) if len(convs) > 1 else 0
    acc_words = max([1, *(int(lay.n_out) for lay in fcs), map_words + -(-feat_bytes // 4)])
    act_bytes = max([n * n, *feats, *(int(lay.n_out) for lay in fcs)])
    return dict(acc_words=acc_words, map_words=map_words, act_bytes=act_bytes, chan_bytes=chan_bytes,
                feat_bytes=feat_bytes,
                trace_act_bytes=n * n + sum(out_len), n_shifts=len(hidden),
                ram_bytes=4 * acc_words + act_bytes + chan_bytes, weight_bytes=weight_bytes,
                shift_bytes=shift_bytes, table_bytes=table_bytes, start_bytes=start_bytes,
                flash_bytes=weight_bytes + shift_bytes + table_bytes + start_bytes)
