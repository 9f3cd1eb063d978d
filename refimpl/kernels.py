"""Leaf numba kernels of engine/CONTRACT.md, on packed weights, over a batch of images.

Each kernel has the name of its C twin without the bm_ prefix (bm_input -> input, bm_fc -> fc,
bm_conv3x3 -> conv3x3, ...), as does tests/naive.py, so a mismatch names the same kernel everywhere.

Rules (house style §3.3): every kernel is @njit(cache=True) with an explicit signature, uses no
globals, no fastmath and never raises; refimpl/model.py validates shapes and ranges before calling.
Weights stay packed (§9) and are decoded here, one row at a time, independently of
contract/packing.py. Accumulators are int64: export proves |acc| <= 2^31 - 2^24, so int64 equals
the device's int32 and no wraparound is emulated. Outputs are written into caller-owned arrays.

The layer kernels apply the per-output shift k[o] themselves (CONTRACT §3): with relu, y = max(acc, 0)
<< k (hidden layers; pooling and ShiftNorm follow); without, the signed final-layer form
acc >= 0 ? acc << k : -((-acc) << k).
"""
from __future__ import annotations

import numpy as np
from numba import njit

# Format ids (fmt_id) are contract.formats' FORMATS[name].id; the kernels spell them and the NF4 codes
# as literals (numba caches compiled kernels by this file alone), and tests/refimpl/test_model.py checks
# them against the table.

@njit("int64(int64, int64)", cache=True)
def field_value(fmt_id, f):
    """Signed weight of the unsigned field f of format fmt_id (not ternary; ids as FORMAT_IDS)."""
    if fmt_id == 0 or fmt_id == 1:                 # binary: 1 -> +1, 0 -> -1
        return 1 if f == 1 else -1
    if fmt_id == 3:                                # 2bitsym: bit1 sign, bit0 m, +-(2m+1)
        v = 2 * (f & 1) + 1
        return -v if (f >> 1) & 1 else v
    if fmt_id == 4:                                # 4bitsym: bit3 sign, bits0..2 m, +-(2m+1)
        v = 2 * (f & 7) + 1
        return -v if (f >> 3) & 1 else v
    if fmt_id == 5:                                # 4bit two's complement
        return f - 16 if f >= 8 else f
    if fmt_id == 6:                                # 8bit two's complement
        return f - 256 if f >= 128 else f
    if fmt_id == 7:                                # fp130: bit3 sign, bits0..2 e, +-2^e
        v = np.int64(1) << (f & 7)
        return -v if (f >> 3) & 1 else v
    # nf4: index into the NF4 table of CONTRACT §2
    nf4 = (-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127)
    return nf4[f & 15]


@njit("void(uint32[::1], int64, int64, int64, int64[::1])", cache=True)
def decode_row(words, base, n_in, fmt_id, w_out):
    """w_out[j] = weight j of the row whose first word is words[base] (n_in weights)."""
    if fmt_id == 2:                                # ternary: 5 trits per byte, 4 bytes per word
        for j0 in range(0, n_in, 5):
            word = np.int64(words[base + j0 // 20])
            t = (word >> (8 * ((j0 // 5) % 4))) & 0xFF
            for j in range(j0, min(j0 + 5, n_in)):
                d = t % 3                          # digit 0, 1, 2 -> weight 0, +1, -1
                w_out[j] = -1 if d == 2 else d
                t //= 3
        return
    if fmt_id == 0 or fmt_id == 1:
        b = 1
    elif fmt_id == 3:
        b = 2
    elif fmt_id == 6:
        b = 8
    else:
        b = 4
    per = 32 // b
    mask = (np.int64(1) << b) - 1
    for j in range(n_in):
        word = np.int64(words[base + j // per])
        w_out[j] = field_value(fmt_id, (word >> ((j % per) * b)) & mask)


@njit("int64(int64, int64, boolean)", cache=True)
def out_shift(acc, k, relu):
    """CONTRACT §3: hidden max(acc, 0) << k; final acc * 2^k in sign-magnitude form."""
    if relu:
        return (acc if acc > 0 else 0) << k
    return acc << k if acc >= 0 else -((-acc) << k)


@njit("void(uint8[:, ::1], int64, int8[:, ::1])", cache=True)
def input(pixels, zero, out):
    """CONTRACT §1: out[b, i] = (p >> 1) - Z for flattened uint8 pixels [B, N*N]."""
    for b in range(pixels.shape[0]):
        for i in range(pixels.shape[1]):
            out[b, i] = (np.int64(pixels[b, i]) >> 1) - zero


@njit("void(int8[:, ::1], uint32[::1], int64, int64, int64, uint8[::1], boolean, int64[:, ::1])",
      cache=True)
def fc(x, words, row_words, fmt_id, n_out, out_shifts, relu, out):
    """out[b, o] = shift_k(sum_i x[b, i] * w[o, i]) for x [B, n_in], packed rows w (CONTRACT §3)."""
    n_in = x.shape[1]
    w = np.empty(n_in, dtype=np.int64)
    for o in range(n_out):
        decode_row(words, o * row_words, n_in, fmt_id, w)
        k = np.int64(out_shifts[o])
        for b in range(x.shape[0]):
            acc = np.int64(0)                      # export proved |acc| < 2**31, so int64 == C int32
            for i in range(n_in):
                acc += np.int64(x[b, i]) * w[i]
            out[b, o] = out_shift(acc, k, relu)


@njit("void(int8[:, :, :, ::1], uint32[::1], int64, int64, int64, int64, uint8[::1], boolean,"
      " int64[:, :, :, ::1])", cache=True)
def conv3x3(x, words, row_words, fmt_id, n_out, groups, out_shifts, relu, out):
    """3x3 valid grouped correlation (CONTRACT §6) of x [B, Cin, H, W] into out [B, n_out, H-2, W-2].

    Output channel c reads input channels g*cpg .. g*cpg+cpg-1 with g = c // (n_out // groups) and
    cpg = Cin // groups; its packed row holds cpg*9 weights in [ci][dy][dx] order. conv1 is groups=1
    with Cin=1; a depthwise layer is groups = Cin = n_out.
    """
    cpg = x.shape[1] // groups
    opg = n_out // groups
    ho, wo = x.shape[2] - 2, x.shape[3] - 2
    w = np.empty((n_out, cpg * 9), dtype=np.int64)
    for c in range(n_out):                         # decode every row once; kernels are tiny
        decode_row(words, c * row_words, cpg * 9, fmt_id, w[c])
    for b in range(x.shape[0]):                    # image-major: one image's maps stay in cache
        for c in range(n_out):
            k = np.int64(out_shifts[c])
            c0 = (c // opg) * cpg
            for h in range(ho):
                for v in range(wo):
                    acc = np.int64(0)
                    for ci in range(cpg):
                        for dy in range(3):
                            for dx in range(3):
                                acc += np.int64(x[b, c0 + ci, h + dy, v + dx]) * w[c, ci * 9 + dy * 3 + dx]
                    out[b, c, h, v] = out_shift(acc, k, relu)


@njit("void(int8[:, :, :, ::1], uint32[::1], int64, int64, int64, uint8[::1], boolean, int64[:, :, :, ::1])",
      cache=True)
def pointwise(x, words, row_words, fmt_id, n_out, out_shifts, relu, out):
    """1x1 conv (CONTRACT §6, pw1) of x [B, C, H, W] into out [B, n_out, H, W]: row o holds w[o, 0..C)."""
    cin = x.shape[1]
    w = np.empty((n_out, cin), dtype=np.int64)
    for o in range(n_out):
        decode_row(words, o * row_words, cin, fmt_id, w[o])
    for b in range(x.shape[0]):
        for o in range(n_out):
            k = np.int64(out_shifts[o])
            for h in range(x.shape[2]):
                for v in range(x.shape[3]):
                    acc = np.int64(0)
                    for c in range(cin):
                        acc += np.int64(x[b, c, h, v]) * w[o, c]
                    out[b, o, h, v] = out_shift(acc, k, relu)


@njit("void(int64[:, :, :, ::1], int64[:, :, :, ::1])", cache=True)
def maxpool2(y, out):
    """2x2 max-pool, stride 2, odd last row/column dropped: out [B, C, H//2, W//2]."""
    for b in range(y.shape[0]):
        for c in range(y.shape[1]):
            for h in range(out.shape[2]):
                for v in range(out.shape[3]):
                    m = y[b, c, 2 * h, 2 * v]
                    m = max(m, y[b, c, 2 * h, 2 * v + 1])
                    m = max(m, y[b, c, 2 * h + 1, 2 * v])
                    m = max(m, y[b, c, 2 * h + 1, 2 * v + 1])
                    out[b, c, h, v] = m


@njit("void(int64[:, ::1], int8[:, ::1], int64[::1])", cache=True)
def shiftnorm(y, out, s_out):
    """CONTRACT §4 per sample b of y [B, L]: ReLU, s = smallest s >= 0 with (M >> s) <= 127,
    out = min((y + ((1 << s) >> 1)) >> s, 127); s_out[b] = s."""
    for b in range(y.shape[0]):
        m = np.int64(0)
        for i in range(y.shape[1]):
            if y[b, i] > m:
                m = y[b, i]
        s = np.int64(0)
        while (m >> s) > 127:
            s += 1
        half = (np.int64(1) << s) >> 1
        for i in range(y.shape[1]):
            v = y[b, i] if y[b, i] > 0 else np.int64(0)
            out[b, i] = min((v + half) >> s, 127)
        s_out[b] = s


@njit("void(int64[:, ::1], int64[::1])", cache=True)
def argmax(logits, out):
    """out[b] = index of the largest logit; ties go to the lowest index (strictly-greater scan)."""
    for b in range(logits.shape[0]):
        best = 0
        for o in range(1, logits.shape[1]):
            if logits[b, o] > logits[b, best]:
                best = o
        out[b] = best


KERNELS = {"input": input, "fc": fc, "conv3x3": conv3x3, "maxpool2": maxpool2,
           "shiftnorm": shiftnorm, "argmax": argmax}
