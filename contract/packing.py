"""Weight codes <-> packed little-endian uint32 words, exactly as engine/CONTRACT.md §9 says.

A layer is a [n_out, n_in] matrix of integer codes (a conv's [n_out, ci, 3, 3] kernel is flattened
by the caller to [n_out, 9*ci], [ci][dy][dx] order). Each row starts on a word boundary. Code j of a
row sits in word j // F at bits [(j % F)*b, (j % F)*b + b), F = 32 // b; padding bits are 0. Ternary
stores 5 base-3 trits per byte (earliest weight = least significant digit), 4 bytes per word
(first byte least significant), 20 weights per word, padded with trit 0.

numpy only (no torch), so export and verification can use it without the training stack.
Field widths and codes per word come from the format table (contract/formats.py).
"""
from __future__ import annotations

import numpy as np

from contract.formats import FORMATS, NF4_CODES

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.int64)
_NF4 = np.array(NF4_CODES, dtype=np.int64)         # ascending, so searchsorted finds the index


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"packing: format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not FORMATS[fmt].exportable:
        raise ValueError(f"packing: format {fmt!r} (float weights) has no integer form and cannot be "
                         f"packed; use one of {', '.join(f for f in FORMATS if FORMATS[f].exportable)}")


def codes_per_word(fmt: str) -> int:
    """Weights held by one 32-bit word: 32 // b, or 20 for ternary."""
    _check_format(fmt)
    return FORMATS[fmt].codes_per_word


def row_words(n_in: int, fmt: str) -> int:
    """Words per packed row of n_in codes (rows are word aligned)."""
    f = codes_per_word(fmt)
    return (n_in + f - 1) // f


def _check_codes(codes: np.ndarray, fmt: str) -> np.ndarray:
    _check_format(fmt)
    c = np.asarray(codes)
    if c.dtype.kind not in "iu" and c.dtype != bool:
        raise ValueError(f"packing: codes must be an integer array; got dtype {c.dtype}")
    c = c.astype(np.int64)
    ok = np.isin(c, np.array(FORMATS[fmt].codes, dtype=np.int64))
    if not ok.all():
        bad = np.argwhere(~ok)[0]
        raise ValueError(f"packing: code {int(c[tuple(bad)])} at index {tuple(int(i) for i in bad)} is not "
                         f"a {fmt} code; allowed: {list(FORMATS[fmt].codes)}")
    return c


def code_to_field(codes: np.ndarray, fmt: str) -> np.ndarray:
    """Unsigned field (ternary: trit digit 0/1/2) of each code, int64, same shape. Raises on bad codes."""
    c = _check_codes(codes, fmt)
    neg = (c < 0).astype(np.int64)
    a = np.abs(c)
    if fmt in ("binary", "binarybalanced"):
        return (c == 1).astype(np.int64)
    if fmt == "ternary":
        return np.where(c == -1, 2, c)
    if fmt == "2bitsym":
        return (neg << 1) | ((a - 1) >> 1)
    if fmt == "4bitsym":
        return (neg << 3) | ((a - 1) >> 1)
    if fmt == "4bit":
        return np.where(c < 0, c + 16, c)
    if fmt == "8bit":
        return np.where(c < 0, c + 256, c)
    if fmt == "fp130":
        e = np.zeros_like(a)
        for k in range(8):
            e[a == 1 << k] = k
        return (neg << 3) | e
    if fmt == "nf4":
        return np.searchsorted(_NF4, c).astype(np.int64)
    raise AssertionError(fmt)


def field_to_code(fields: np.ndarray, fmt: str) -> np.ndarray:
    """Code of each unsigned field (ternary: trit digit), int64. Raises on fields out of range."""
    _check_format(fmt)
    f = np.asarray(fields).astype(np.int64)
    hi = 3 if fmt == "ternary" else 1 << FORMATS[fmt].field_bits
    if f.size and (f.min() < 0 or f.max() >= hi):
        v = int(f[(f < 0) | (f >= hi)][0])
        raise ValueError(f"packing: field {v} is out of range for {fmt} (allowed: 0 to {hi - 1})")
    if fmt in ("binary", "binarybalanced"):
        return np.where(f == 1, 1, -1)
    if fmt == "ternary":
        return np.where(f == 2, -1, f)
    if fmt in ("2bitsym", "4bitsym"):
        sign_bit = FORMATS[fmt].field_bits - 1
        mag = 2 * (f & ((1 << sign_bit) - 1)) + 1
        return np.where(f >> sign_bit, -mag, mag)
    if fmt == "4bit":
        return np.where(f >= 8, f - 16, f)
    if fmt == "8bit":
        return np.where(f >= 128, f - 256, f)
    if fmt == "fp130":
        mag = np.left_shift(1, f & 7)
        return np.where(f >> 3, -mag, mag)
    if fmt == "nf4":
        return _NF4[f]
    raise AssertionError(fmt)


def pack(codes: np.ndarray, fmt: str) -> tuple[np.ndarray, int]:
    """Pack [n_out, n_in] codes into (words uint32 [n_out * row_words], row_words)."""
    c = np.asarray(codes)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
        raise ValueError(f"packing: codes must be a 2-D [n_out, n_in] array with n_out, n_in >= 1; "
                         f"got shape {c.shape}. Flatten a conv kernel to [n_out, 9 * in_channels] first")
    n_out, n_in = c.shape
    fields = code_to_field(c, fmt).astype(np.uint64)
    rw, per = row_words(n_in, fmt), codes_per_word(fmt)
    padded = np.zeros((n_out, rw * per), dtype=np.uint64)      # padding: zero bits / trit 0
    padded[:, :n_in] = fields
    if fmt == "ternary":
        trits = padded.reshape(n_out, rw, 4, 5)
        byte = (trits * _POW3.astype(np.uint64)).sum(-1)          # <= 242
        words = (byte << (np.arange(4, dtype=np.uint64) * np.uint64(8))).sum(-1)
    else:
        b = FORMATS[fmt].field_bits
        shifts = np.arange(per, dtype=np.uint64) * np.uint64(b)
        words = (padded.reshape(n_out, rw, per) << shifts).sum(-1)   # disjoint bits: sum == or
    return words.astype(np.uint32).reshape(-1), rw


def unpack(words: np.ndarray, fmt: str, n_out: int, n_in: int) -> np.ndarray:
    """Inverse of pack: int64 codes [n_out, n_in]. Raises if the length, a field or the padding is wrong."""
    _check_format(fmt)
    w = np.asarray(words)
    rw, per = row_words(n_in, fmt), codes_per_word(fmt)
    if w.dtype != np.uint32 or w.ndim != 1 or w.size != n_out * rw:
        raise ValueError(f"packing: {fmt} words for [{n_out}, {n_in}] must be 1-D uint32 of length "
                         f"{n_out * rw}; got {w.dtype} shape {w.shape}")
    w = w.astype(np.uint64).reshape(n_out, rw, 1)
    if fmt == "ternary":
        byte = (w >> (np.arange(4, dtype=np.uint64) * np.uint64(8))) & np.uint64(0xFF)
        if (byte > 242).any():
            raise ValueError(f"packing: ternary byte {int(byte[byte > 242][0])} exceeds 242 = 3^5 - 1")
        fields = (byte[..., None] // _POW3.astype(np.uint64)) % np.uint64(3)
    else:
        b = FORMATS[fmt].field_bits
        fields = (w >> (np.arange(per, dtype=np.uint64) * np.uint64(b))) & np.uint64((1 << b) - 1)
    fields = fields.reshape(n_out, rw * per).astype(np.int64)
    if fields[:, n_in:].any():
        raise ValueError(f"packing: {fmt} row padding (fields {n_in} to {rw * per - 1}) must be zero")
    return field_to_code(fields[:, :n_in], fmt)
