"""The engine's memory layout of a packed model: the buffer sizes the streaming driver needs and the flash
the model takes, computed once at export (CONTRACT §6). The C header (engine/header.py), the size gates and
the Python twin of the streaming driver (refimpl/stream.py) all read them from here. numpy only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from contract.model import PackedModel, stream_runs

LAYER_BYTES = 32      # sizeof(bm_layer) on a 32-bit target (ilp32 / ilp32e)
MODEL_BYTES = 48      # sizeof(bm_model) on a 32-bit target


def layout(model: PackedModel) -> dict[str, Any]:
    """Sizes of a packed model, as the header #defines them.

    The conv layers of a CNN stream one channel at a time (CONTRACT §6, "Streaming"), so their
    buffers hold one channel's maps. map_words: the last conv layer's int32 map on one channel (its H*W
    values after the pool: the kernels compute a pooled layer pooled; 0 without conv layers).
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

    With a pw layer (model.mix) the conv layers stream in two runs around it (CONTRACT §6, "With pw1"): act also
    holds the first run's map after x0, which the pw layer rewrites in place and the second run reads; map_words
    is at least the pw layer's n_out (its int32 outputs at one pixel); feat holds the larger of the last run's
    bytes, a first run's exponents and shifts (its bytes wait in act), and the pw layer's gathered inputs and
    per-pixel exponents; each run of two or more layers has its own start state.
    """
    n = int(model.image_size)
    hidden = [lay for lay in model.layers if lay.requant]
    convs = [lay for lay in model.layers if lay.kind != "fc"]
    fcs = [lay for lay in hidden if lay.kind == "fc"]
    out_len = [int(np.prod(lay.out_shape)) for lay in hidden]
    runs = stream_runs(model.layers)
    pws = [lay for lay in convs if lay.kind == "pwconv"]
    # each run's last layer's int32 map, after its pool (computed pooled), and a pw layer's outputs at a pixel
    map_words = max([*(int(np.prod(run[-1].out_shape[1:])) for run in runs), *(int(lay.n_out) for lay in pws)],
                    default=0)
    feats = [int(np.prod(convs[-1].out_shape))] if convs else []
    held = [n * n + int(np.prod(run[-1].out_shape)) for run in runs[:-1]]   # x0 and a first run's map
    chan_bytes = n * n if len(convs) > 1 else 0
    feat_bytes = max([feats[0] + int(runs[-1][0].n_out) + 2 * len(runs[-1]),
                      *(int(run[0].n_out) + 2 * len(run) for run in runs[:-1]),
                      *(int(lay.n_in) + int(np.prod(lay.in_shape[1:])) for lay in pws)]) if convs else 0
    shift_bytes = sum(int(lay.n_out) for lay in model.layers if np.asarray(lay.out_shifts).any())
    weight_bytes = sum(4 * int(np.asarray(lay.words).size) for lay in model.layers)
    table_bytes = LAYER_BYTES * len(model.layers) + MODEL_BYTES
    start_bytes = sum(len(run) - 1 + int(run[0].n_out) for run in runs if len(run) > 1)
    acc_words = max([1, *(int(lay.n_out) for lay in fcs), map_words + -(-feat_bytes // 4)])
    act_bytes = max([n * n, *feats, *held, *(int(lay.n_out) for lay in fcs)])
    return dict(acc_words=acc_words, map_words=map_words, act_bytes=act_bytes, chan_bytes=chan_bytes,
                feat_bytes=feat_bytes,
                trace_act_bytes=n * n + sum(out_len), n_shifts=len(hidden),
                ram_bytes=4 * acc_words + act_bytes + chan_bytes, weight_bytes=weight_bytes,
                shift_bytes=shift_bytes, table_bytes=table_bytes, start_bytes=start_bytes,
                flash_bytes=weight_bytes + shift_bytes + table_bytes + start_bytes)
