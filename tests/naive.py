"""Plain-Python twin of refimpl/kernels.py (its names: the C engine's without bm_), on UNPACKED integer
codes, for tests only.

Python ints and nested lists, written straight from engine/CONTRACT.md; no vectorisation. Also a
bit-by-bit `pack` twin of contract/packing.pack (CONTRACT §9).
"""
from __future__ import annotations

NF4 = [-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127]
BITS = {"binary": 1, "binarybalanced": 1, "2bitsym": 2, "4bitsym": 4, "4bit": 4, "8bit": 8,
        "fp130": 4, "nf4": 4}


def _field(code: int, fmt: str) -> int:
    if fmt in ("binary", "binarybalanced"):
        return {1: 1, -1: 0}[code]
    if fmt in ("2bitsym", "4bitsym"):
        sign = BITS[fmt] - 1
        return (1 << sign if code < 0 else 0) | (abs(code) - 1) // 2
    if fmt in ("4bit", "8bit"):
        return code % (1 << BITS[fmt])                 # two's complement field
    if fmt == "fp130":
        return (8 if code < 0 else 0) | (abs(code).bit_length() - 1)
    if fmt == "nf4":
        return NF4.index(code)
    raise ValueError(fmt)


def pack(codes, fmt: str) -> tuple[list[int], int]:
    """Rows of codes -> (flat list of uint32 word values, words per row), one field at a time."""
    words_out, row_words = [], 0
    for row in codes:
        row = [int(c) for c in row]
        if fmt == "ternary":
            per = 20
            row_words = (len(row) + per - 1) // per
            words = [0] * row_words
            for j, c in enumerate(row):
                digit = {0: 0, 1: 1, -1: 2}[c]
                words[j // 20] += digit * 3 ** (j % 5) * 256 ** ((j // 5) % 4)
        else:
            b = BITS[fmt]
            per = 32 // b
            row_words = (len(row) + per - 1) // per
            words = [0] * row_words
            for j, c in enumerate(row):
                words[j // per] |= _field(c, fmt) << ((j % per) * b)
        words_out += words
    return words_out, row_words


def _shift(acc: int, k: int, relu: bool) -> int:
    return max(acc, 0) * 2 ** k if relu else acc * 2 ** k


def input(pixels, zero: int):
    """[B][L] pixels -> (p >> 1) - Z."""
    return [[int(p) // 2 - zero for p in img] for img in pixels]


def fc(x, codes, out_shifts, relu: bool):
    """x [B][n_in], codes [n_out][n_in] -> [B][n_out] (hidden: ReLU then * 2^k; final: acc * 2^k)."""
    return [[_shift(sum(int(a) * int(w) for a, w in zip(xb, row)), int(k), relu)
             for row, k in zip(codes, out_shifts)] for xb in x]


def conv3x3(x, codes, groups: int, out_shifts, relu: bool):
    """x [B][Cin][H][W], codes [n_out][cpg*9] ([ci][dy][dx]) -> [B][n_out][H-2][W-2], valid 3x3."""
    n_out, cin = len(codes), len(x[0]) if x else 0
    cpg, opg = cin // groups, n_out // groups
    out = []
    for xb in x:
        h_in, w_in = len(xb[0]), len(xb[0][0])
        maps = []
        for c in range(n_out):
            g = c // opg
            rows = []
            for h in range(h_in - 2):
                row = []
                for v in range(w_in - 2):
                    acc = 0
                    for ci in range(cpg):
                        for dy in range(3):
                            for dx in range(3):
                                acc += int(xb[g * cpg + ci][h + dy][v + dx]) * int(codes[c][ci * 9 + dy * 3 + dx])
                    row.append(_shift(acc, int(out_shifts[c]), relu))
                rows.append(row)
            maps.append(rows)
        out.append(maps)
    return out


def maxpool2(y):
    """[B][C][H][W] -> [B][C][H//2][W//2], 2x2 max, stride 2."""
    return [[[[max(m[2 * h][2 * v], m[2 * h][2 * v + 1], m[2 * h + 1][2 * v], m[2 * h + 1][2 * v + 1])
               for v in range(len(m[0]) // 2)] for h in range(len(m) // 2)] for m in yb] for yb in y]


def shiftnorm(y):
    """[B][L] -> ([B][L] outputs in [0, 127], [B] shifts s), CONTRACT §4 with bit_length."""
    outs, shifts = [], []
    for yb in y:
        yb = [max(int(v), 0) for v in yb]
        m = max(yb, default=0)
        s = max(0, m.bit_length() - 7)
        outs.append([min((v + ((1 << s) >> 1)) >> s, 127) for v in yb])
        shifts.append(s)
    return outs, shifts


def argmax(logits):
    """[B][n] -> [B]: first index of the maximum."""
    return [list(row).index(max(row)) for row in logits]
