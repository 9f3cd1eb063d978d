"""The C engine's channel-streaming CNN driver (engine/bitmcu.c, "CNN streaming"), step by step in Python.

Each function here is the C function of the same name without its bm__ prefix (bm__cnn_pass -> cnn_pass, ...),
and works on the same buffers as the C driver: `act` (x0, then the features), `chan` (one channel's N x N
working map, rows N apart), `acc` (the last layer's int32 channel map) and `feat`, the driver's bookkeeping
in a run (the last layer's cached bytes, its exponents, then per conv layer the shift guessed and the shift
measured), which follows the map in the C engine's acc buffer, so the hidden fc layers' outputs overwrite it
(`run` does the same); every run starts from the model's `stream_start` (guesses and channel order). A test
runs images through both and compares the logits, the trace and `feat` after every run
(tests/refimpl/test_stream.py). It is written for reading, not speed; refimpl/model.py is the fast whole-map
engine, whose results the streaming order must not change (CONTRACT §6, "Streaming").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.layout import layout
from contract.formats import FORMAT_IDS
from contract.model import PackedLayer, PackedModel, plain_start, stream_runs
from refimpl import kernels as K


def shift_to(m: int, bits: int) -> int:
    """bm__shift_to: the smallest s >= 0 with (m >> s) < 2^bits, for m >= 0."""
    return max(0, int(m).bit_length() - bits)


def cnn_features(model: PackedModel, convs: list[PackedLayer]) -> int:
    """bm__cnn_features, for a model that PackedModel.check accepts: C*H*W of the run's last layer."""
    return int(np.prod(convs[-1].out_shape))


def reguess(guess: np.ndarray, j: int, nh: int, to: int) -> None:
    """bm__reguess: guess[j] = to, and the next guessed layer's guess moves the other way by as much."""
    if j + 1 < nh:
        g = int(guess[j + 1]) + int(guess[j]) - to
        guess[j + 1] = min(max(g, 0), 24)
    guess[j] = to


@dataclass
class Cnn:
    """bm__cnn: one run's streaming state and its buffers."""
    layers: list[PackedLayer]     # the conv layers (packed, contract.model.from_export)
    act: np.ndarray                  # int8 [act_bytes]: x0, then the features
    chan: np.ndarray                 # int8 [N, N]: one channel's working map
    acc: np.ndarray                  # int64 [acc_words]: the last layer's channel map
    feat: np.ndarray                 # uint8 [feat_bytes]
    trace: np.ndarray | None         # int8: the conv layers' part of the trace, or None
    start: list[int] = field(default_factory=list)   # the run's part of stream_start (empty: all 0)
    held: bool = False               # a pw layer follows: the run's output stays in act after x0 (CONTRACT §6)
    src: np.ndarray | None = None    # int8 [C, H, W]: the map a run after a pw layer reads (None: x0)
    n: int = 0                       # conv layers
    nh: int = 0                      # the layers with a guessed shift: all but the last
    ch: int = 0                      # channels
    nn: int = 0                      # N
    feats: int = 0                   # C*H*W values of the last layer
    stops: int = 0                   # passes of this run stopped early
    probe: bool = True               # until the run's first channel has its conv1 shift, the first guess
    cache: np.ndarray = field(default=None)    # feat's regions (cnn_open): the last layer's bytes y >> a,
    exps: np.ndarray = field(default=None)     # a per channel,
    guess: np.ndarray = field(default=None)    # the shifts used,
    meas: np.ndarray = field(default=None)     # the shifts measured in the pass under way,
    order: list[int] = field(default_factory=list)   # the channels in the order a pass takes them
    work: int = 0                    # conv values computed in this run (Python only: start_state's measure)


def cnn_open(st: Cnn, feats: int) -> None:
    """bm__cnn_open: lay out feat and take the guesses (0 when out of range) and channel order of start."""
    st.n, st.ch, st.nn, st.feats = len(st.layers), int(st.layers[0].n_out), int(st.layers[0].in_shape[2]), feats
    st.nh, st.stops, st.probe = st.n - 1, 0, True
    off = 0
    regions = (("cache", feats), ("exps", st.ch), ("guess", st.n), ("meas", st.n))
    if st.held:                                          # cached where the output goes, after x0
        lo = _held(st)
        st.cache = st.act[lo:lo + feats].view(np.uint8)
        regions = regions[1:]
    for name, size in regions:
        setattr(st, name, st.feat[off:off + size])        # views: the steps write feat itself
        off += size
    st.order = list(st.start[st.nh:]) if st.start and st.nh else list(range(st.ch))
    for j in range(st.nh):
        g = st.start[j] if st.start else 0
        st.guess[j] = g if g <= 24 else 0


def _held(st: Cnn) -> int:
    """Where a held run's output starts in act: after the N x N input x0 (only the first run is held)."""
    return int(st.layers[0].in_shape[1] * st.layers[0].in_shape[2])


def cnn_weights(lay: PackedLayer, c: int) -> np.ndarray:
    """bm__cnn_weights: channel c's 9 weights times 2^k ([dy][dx]), as the multiply build folds them."""
    w = np.empty(9, dtype=np.int64)
    K.decode_row(lay.words, c * int(lay.row_words), 9, FORMAT_IDS[lay.format], w)
    return w.reshape(3, 3) << int(np.asarray(lay.out_shifts)[c])


def _conv(x: np.ndarray, w: np.ndarray, h: int, v: int) -> np.ndarray:
    """max(0, window (r, q) . w) for r < h, q < v of a map x (the conv kernels, ReLU included)."""
    y = sum(x[dy:dy + h, dx:dx + v].astype(np.int64) * w[dy, dx] for dy in range(3) for dx in range(3))
    return np.maximum(y, 0)


def _pool(y: np.ndarray) -> np.ndarray:
    """2x2 max-pool of a map with even sides."""
    return np.maximum(np.maximum(y[0::2, 0::2], y[0::2, 1::2]), np.maximum(y[1::2, 0::2], y[1::2, 1::2]))


def _conv_pooled(st: Cnn, lay: PackedLayer, x: np.ndarray, c: int) -> np.ndarray:
    """The layer's values for channel c: conv, ReLU, << k, then its pool; a pool's dropped odd row and column
    are not computed (bm__conv_pool), the others are (bm__conv_q, bm__conv_y)."""
    h, v = int(lay.in_shape[1]) - 2, int(lay.in_shape[2]) - 2
    w = cnn_weights(lay, c)
    if lay.pool:
        st.work += (h & ~1) * (v & ~1)
        return _pool(_conv(x, w, h & ~1, v & ~1))
    st.work += h * v
    return _conv(x, w, h, v)


def cnn_hidden(st: Cnn, lay: PackedLayer, x: np.ndarray, c: int, g: int) -> int:
    """bm__cnn_hidden: layer lay (not the last) of channel c on map x, requantized with shift g into chan.
    Returns the shift of the channel's own maximum (the C kernels OR the values: the same bit length)."""
    y = _conv_pooled(st, lay, x, c)
    half = (1 << g) >> 1
    st.chan[:y.shape[0], :y.shape[1]] = np.minimum((y + half) >> g, 127) * (y > 0)
    return shift_to(int(y.max(initial=0)), 7)


def cnn_last(st: Cnn, lay: PackedLayer, x: np.ndarray, c: int) -> int:
    """bm__cnn_last: the last layer of channel c into acc, kept in the cache as bytes y >> a with a = exps[c]
    the smallest shift that brings the channel's maximum to 8 bits. Returns the channel's own shift."""
    y = _conv_pooled(st, lay, x, c)
    plane = y.size
    st.acc[:plane] = y.reshape(-1)
    top = int(y.max(initial=0))
    a = shift_to(top, 8)
    st.exps[c] = a
    st.cache[c * plane:(c + 1) * plane] = st.acc[:plane] >> a
    return shift_to(top, 7)


def cnn_trace_map(st: Cnn, lay: PackedLayer, tl: int, c: int) -> None:
    """bm__cnn_trace_map: channel c's map of layer lay (in chan) into the layer's trace at offset tl."""
    h, v = (int(d) for d in lay.out_shape[1:])
    st.trace[tl + c * h * v:tl + (c + 1) * h * v] = st.chan[:h, :v].reshape(-1)


def cnn_channel(st: Cnn, c: int) -> int:
    """bm__cnn_channel: channel c through every conv layer. Returns the layer whose
    guess it proves wrong (too low, or the run's first probe differs), where the pass stops, or n."""
    x = st.act[:st.nn * st.nn].reshape(st.nn, st.nn) if st.src is None else st.src[c]
    tl = 0
    for j, lay in enumerate(st.layers[:st.nh]):
        s = cnn_hidden(st, lay, x, c, int(st.guess[j]))
        x = st.chan
        if s > st.meas[j]:
            st.meas[j] = s
        if st.stops < 2 * st.n and (s > st.guess[j] or (st.probe and s != st.guess[j])):
            st.probe = False
            return j
        st.probe = False
        if st.trace is not None:
            cnn_trace_map(st, lay, tl, c)
            tl += st.ch * int(np.prod(lay.out_shape[1:]))
    s = cnn_last(st, st.layers[st.nh], x, c)
    if s > st.meas[st.nh]:
        st.meas[st.nh] = s
    return st.n


def cnn_pass(st: Cnn) -> int:
    """bm__cnn_pass: every channel in st.order. Returns where the pass stopped, or n."""
    st.meas[:] = 0
    wrong = st.n
    for c in st.order:
        if wrong != st.n:
            break
        if c < st.ch:
            wrong = cnn_channel(st, int(c))
    return wrong


def cnn_settle(st: Cnn, wrong: int) -> bool:
    """bm__cnn_settle: True when the pass went through with every guess equal to its measure; else False, with
    the guess that stopped it, or else the first wrong one, replaced by its measure."""
    if wrong < st.n:
        st.stops += 1
    else:
        wrong = next((j for j in range(st.nh) if st.meas[j] != st.guess[j]), st.nh)
        if wrong >= st.nh:
            return True
    reguess(st.guess, wrong, st.nh, int(st.meas[wrong]))
    return False


def cnn_close(st: Cnn) -> None:
    """bm__cnn_close: the last layer's shift becomes its guess (for the trace), and the cached bytes requantized with d = s - a_c give the features in act."""
    s = int(st.meas[st.nh])
    st.guess[st.nh] = s
    plane = st.feats // st.ch
    out = cnn_out(st)
    for c in range(st.ch):
        d = s - int(st.exps[c])
        out[c * plane:(c + 1) * plane] = from_bytes(st.cache[c * plane:(c + 1) * plane], d)


def from_bytes(v: np.ndarray, d: int) -> np.ndarray:
    """bm__from_byte: kept bytes v = y >> a requantized with the layer's shift s, d = s - a (CONTRACT §6)."""
    return np.minimum((v.astype(np.int64) + ((1 << d) >> 1)) >> d, 127)


def cnn_out(st: Cnn) -> np.ndarray:
    """The run's features in act: after x0 for a held run, else from act's start (its input is dead)."""
    lo = _held(st) if st.held else 0
    return st.act[lo:lo + st.feats]


def cnn_trace(st: Cnn) -> list[int]:
    """bm__cnn_trace: the features after the hidden maps in the trace; returns the n shifts for it."""
    if st.trace is not None:
        st.trace[st.trace.size - st.feats:] = cnn_out(st)
    return [int(g) for g in st.guess]


def run_cnn(st: Cnn, feats: int) -> tuple[list[int], int]:
    """bm__run_cnn: the conv layers on x0 in act; returns their shifts and the number of passes taken."""
    cnn_open(st, feats)
    passes = 1
    while not cnn_settle(st, cnn_pass(st)):
        passes += 1
    cnn_close(st)
    return cnn_trace(st), passes


def new_feat(model: PackedModel) -> np.ndarray:
    """The driver's state of a fresh device: feat_bytes zero bytes (a static buffer)."""
    return np.zeros(layout(model)["feat_bytes"], dtype=np.uint8)


def run_pw(lay: PackedLayer, x: np.ndarray, acc: np.ndarray, feat: np.ndarray) -> int:
    """bm__run_pw: the pw layer on the held map x (int8 [C, H, W], a view of act), in place, a pixel at a time:
    the pixel's C inputs gathered into feat[:C], its outputs (the fc kernel) in acc, kept as bytes y >> a over its
    inputs with a per pixel (feat[C:C + H*W]), then requantized with the layer's shift, which it returns."""
    c, h, w = (int(v) for v in x.shape)
    plane, n_out = h * w, int(lay.n_out)
    flat = x.reshape(c, plane)
    vec, exps = feat[:c].view(np.int8), feat[c:c + plane]
    top = 0
    k = np.asarray(lay.out_shifts).astype(np.uint8)
    for p in range(plane):
        vec[:] = flat[:, p]
        y = np.empty((1, n_out), dtype=np.int64)
        K.fc(np.ascontiguousarray(vec.reshape(1, c)), lay.words, int(lay.row_words), FORMAT_IDS[lay.format],
             n_out, k, True, y)
        acc[:n_out] = y[0]
        m = int(y.max(initial=0))
        a = shift_to(m, 8)
        exps[p] = a
        top = max(top, m)
        flat.view(np.uint8)[:, p] = y[0] >> a
    s = shift_to(top, 7)
    for p in range(plane):
        flat[:, p] = from_bytes(flat.view(np.uint8)[:, p], s - int(exps[p]))
    return s


def _runs_and_pw(convs: list[PackedLayer]) -> tuple[list[list[PackedLayer]], PackedLayer | None]:
    """The conv layers as bm_run takes them: the streamed runs (contract.model.stream_runs) and the pw layer
    between the first two, or None. Raises ValueError for what the C engine refuses: a first layer that is not
    conv1, or a pw layer that is not between two runs, or more than one."""
    runs = stream_runs(convs)
    pws = [lay for lay in convs if lay.kind == "pwconv"]
    if convs[0].kind != "conv" or len(pws) != len(runs) - 1 or len(pws) > 1:   # a first or last pw: one run
        raise ValueError(f"refimpl.stream: conv layers {[lay.name for lay in convs]}: the engine streams conv1 and "
                         "depthwise layers, with at most one pw layer between two of them")
    return runs, (pws[0] if pws else None)


def run(model: PackedModel, pixels: np.ndarray, feat: np.ndarray) -> dict[str, Any]:
    """bm_run on one image [N, N] of a packed CNN (contract.model.from_export), with the driver's state feat
    (updated in place, as the device's). Returns logits, the trace acts as bm_trace lays them out (x0, then
    every requantized layer, flat), the shifts and the passes the conv layers took (of the run that took the
    most, with a pw layer)."""
    sizes = layout(model)
    n = int(model.image_size)
    convs = [lay for lay in model.layers if lay.kind != "fc"]
    fcs = model.layers[len(convs):]
    act = np.zeros(sizes["act_bytes"], dtype=np.int8)
    x0 = np.empty((1, n * n), dtype=np.int8)
    K.input(np.ascontiguousarray(pixels.reshape(1, n * n)), int(model.input_zero), x0)
    act[:n * n] = x0[0]
    chan = np.zeros((n, n), dtype=np.int8)
    acc = np.zeros(sizes["acc_words"], dtype=np.int64)
    acts, shifts, passes, pos, src = [x0[0]], [], 0, 0, None
    runs, pw = _runs_and_pw(convs)
    for i, lays in enumerate(runs):
        if i:                                           # the pw layer, between the two runs
            src = act[n * n:n * n + int(np.prod(pw.in_shape))].reshape(pw.in_shape)
            shifts.append(run_pw(pw, src, acc, feat))
            acts.append(src.reshape(-1).copy())
        nh, ch = len(lays) - 1, int(lays[0].n_out)
        start = list(model.stream_start[pos:pos + nh + ch]) if nh and model.stream_start else []
        pos += len(start)
        feats = cnn_features(model, lays)
        hidden = sum(int(np.prod(lay.out_shape)) for lay in lays[:-1])
        st = Cnn(layers=lays, act=act, chan=chan, acc=acc, feat=feat, trace=np.zeros(hidden + feats, dtype=np.int8),
                 start=start, held=i + 1 < len(runs), src=src)
        run_shifts, run_passes = run_cnn(st, feats)
        acts.append(st.trace)
        shifts += run_shifts
        passes = max(passes, run_passes)
    feats = cnn_features(model, convs)
    x = act[:feats].reshape(1, feats)
    for lay in fcs:
        relu = bool(lay.requant)
        y = np.empty((1, int(lay.n_out)), dtype=np.int64)
        K.fc(np.ascontiguousarray(x), lay.words, int(lay.row_words), FORMAT_IDS[lay.format],
             int(lay.n_out), np.asarray(lay.out_shifts).astype(np.uint8), relu, y)
        if not relu:
            return dict(logits=y[0], acts=np.concatenate(acts), shifts=shifts, passes=passes)
        over = y[0].astype("<i4").view(np.uint8)[4 * sizes["map_words"]:][:feat.size]  # acc's int32 outputs
        feat[:over.size] = over                                              # reach over feat, behind the map
        x = np.empty_like(y, dtype=np.int8)
        s = np.empty(1, dtype=np.int64)
        K.shiftnorm(y, x, s)
        acts.append(x[0])
        shifts.append(int(s[0]))
    raise ValueError("refimpl.stream.run: the model has no final fc layer")


def start_state(model: PackedModel, pixels: np.ndarray, tries: int = 500) -> list[int]:
    """A stream_start for a CNN from sample images uint8 [B, N, N] (training images, at export); a choice of
    speed only (results never depend on it). The probe (the run's first channel, which sets conv1's guess) is
    the channel most often at conv1's shift. The guesses: of the shifts that occur together most often, and
    that tuple lowered by one in any subset of its layers (a guess too high costs a whole pass, one too low a
    stop), the one whose slowest 1% of runs over the first `tries` images compute the fewest conv values on
    average (then the fewest over all: the limit is on the slowest run, and one outlier should not decide),
    each with its own channel order (`_order`, which needs many images to meet the rare slow ones). This is
    the first streamed run's part; a later run (after a pw layer, CONTRACT §6) of two or more layers gets
    guesses 0 and the channels in order. Empty when no run has two conv layers."""
    runs = stream_runs(model.layers)
    later = plain_start(runs[1:])
    convs = runs[0] if runs else []
    nh = len(convs) - 1
    if len(pixels) == 0 or (nh < 1 and not later):
        return []
    if nh < 1:
        return later
    shifts, own = _shifts_and_own(convs, model, pixels)
    reach = (own == shifts[:, :, None]).mean(axis=0)     # [nh, C]: how often a channel holds its layer's shift
    probe = int(np.argmax(reach[0]))
    tuples, counts = np.unique(shifts, axis=0, return_counts=True)
    mode = tuples[int(np.argmax(counts))]
    best, best_cost = [], None
    for low in range(1 << nh):
        guess = [max(int(g) - (low >> j & 1), 0) for j, g in enumerate(mode)]
        start = guess + _order(own, shifts, guess, probe, reach.sum(axis=0))
        work = np.sort([_work(model, convs, start, px, len(runs) > 1) for px in pixels[:tries]])
        cost = (work[-max(1, len(work) // 100):].mean(), work.sum())
        if best_cost is None or cost < best_cost:
            best, best_cost = start, cost
    return best + later


def _shifts_and_own(convs: list[PackedLayer], model: PackedModel, pixels: np.ndarray,
                    chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The shifts [B, nh] of the conv layers but the last, and each channel's own shift [B, nh, C], from the
    whole-map engine, `chunk` images at a time (its maps of many images would not fit in memory)."""
    from refimpl.model import run as run_whole          # the fast whole-map engine
    nh = len(convs) - 1
    shifts, own = [], []
    for lo in range(0, len(pixels), chunk):
        res = run_whole(model, pixels[lo:lo + chunk])
        shifts.append(np.stack([s for _, s in res["shifts"][:nh]], axis=1))
        own.append(np.stack([np.concatenate([_own_shifts(lay, res["acts"][j][1][k:k + 256])
                                             for k in range(0, len(res["acts"][j][1]), 256)])
                             for j, lay in enumerate(convs[:nh])], axis=1))
    return np.concatenate(shifts), np.concatenate(own)


def _order(own: np.ndarray, shifts: np.ndarray, guess: list[int], probe: int, reach: np.ndarray) -> list[int]:
    """The channel order for start guesses `guess`: the probe, then greedily the channel that proves the most
    sample images' first too-low guess wrong among those no earlier channel does (ties: the one most often at
    its layers' shifts), so that a pass stops early. own [B, nh, C]: each channel's own shift per image and
    layer (exact earlier shifts), shifts [B, nh]: the layers' shifts, reach [C]. A guess too high is not
    counted: no channel shows it before the pass ends."""
    b, nh, ch = own.shape
    cover = np.zeros((b, ch), dtype=bool)               # channel c stops image i's first pass
    for i in range(b):
        g = np.array(guess, dtype=np.int64)
        reguess(g, 0, nh, int(own[i, 0, probe]))        # the probe's conv1 shift replaces the guess (cnn_channel)
        j = next((j for j in range(nh) if g[j] != shifts[i, j]), nh)
        if j < nh and g[j] < shifts[i, j]:
            cover[i] = own[i, j] > g[j]
    order, rest = [probe], [c for c in np.argsort(-reach, kind="stable") if c != probe]
    left = ~cover[:, probe] & cover.any(axis=1)
    while rest:
        gain = cover[left][:, rest].sum(axis=0)
        c = rest.pop(int(np.argmax(gain)))              # argmax takes the first: the most reach among ties
        order.append(int(c))
        left &= ~cover[:, c]
    return order


def _work(model: PackedModel, convs: list[PackedLayer], start: list[int], pixels: np.ndarray, held: bool) -> int:
    """Conv values the first streamed run (convs, `held` when a pw layer follows) of image pixels [N, N]
    computes from start (passes stopped early included)."""
    sizes, n = layout(model), int(model.image_size)
    act = np.zeros(sizes["act_bytes"], dtype=np.int8)
    x0 = np.empty((1, n * n), dtype=np.int8)
    K.input(np.ascontiguousarray(pixels.reshape(1, n * n)), int(model.input_zero), x0)
    act[:n * n] = x0[0]
    st = Cnn(layers=convs, act=act, chan=np.zeros((n, n), dtype=np.int8),
             acc=np.zeros(sizes["acc_words"], dtype=np.int64), feat=new_feat(model), trace=None, start=start,
             held=held)
    run_cnn(st, cnn_features(model, convs))
    return st.work


def _own_shifts(lay: PackedLayer, x: np.ndarray) -> np.ndarray:
    """Per image of the layer's int8 input x [B, C, H, W] and channel: the shift of the channel's own maximum after
    conv, ReLU, << k and pool (bm__cnn_hidden's return value) [B, C]."""
    h, w = (int(v) - 2 for v in lay.in_shape[1:])
    y = np.empty((x.shape[0], int(lay.n_out), h, w), dtype=np.int64)
    K.conv3x3(np.ascontiguousarray(x), lay.words, lay.row_words, FORMAT_IDS[lay.format], lay.n_out, lay.groups,
              lay.out_shifts.astype(np.uint8), True, y)
    if lay.pool:
        pooled = np.empty((x.shape[0], int(lay.n_out), h // 2, w // 2), dtype=np.int64)
        K.maxpool2(y, pooled)
        y = pooled
    top = y.reshape(y.shape[0], y.shape[1], -1).max(axis=2)
    return np.maximum(np.frexp(top.astype(np.float64))[1] - 7, 0).astype(np.int64)   # bit lengths: exact below 2^53
