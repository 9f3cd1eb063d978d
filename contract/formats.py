"""Weight formats as one table (engine/CONTRACT.md §2 and §9): one row per format.

Each row says how a weight is stored (field bits, codes per 32-bit word), which integer codes it
takes, whether an engine needs a multiplier for it, and the id the numba and C engines dispatch on.
The C engine's constants (engine/bitmcu.h) are checked against this table by tests/engine/test_bitmcu.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

NF4_LEVELS = (-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
              0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.723, 1.0)
# round-half-away-from-zero(level * 127), CONTRACT §2
NF4_CODES = tuple(int(math.copysign(math.floor(abs(v) * 127 + 0.5), v)) for v in NF4_LEVELS)
TERNARY_PER_WORD = 20     # 5 trits per byte, 4 bytes per word


@dataclass(frozen=True)
class FormatSpec:
    name: str
    id: int                     # the engines' format id (BM_FMT_* in engine/bitmcu.h); -1: not exportable
    bits: float                 # storage bits per weight as packed (ternary: 8 bits / 5 trits)
    field_bits: int             # bits of one packed field (ternary: a byte of 5 trits; none: 0)
    codes: tuple[int, ...]      # sorted integer code set (empty for 'none')
    multiplier_free: bool       # engine needs only add/sub/shift
    max_abs_code: int
    scale_per_clip: float       # scale = scale_per_clip / clip, so the top of the range sits near the clip

    @property
    def level_bits(self) -> float:
        """log2(number of codes): entropy capacity, and OCTAV's B (step = 2*clip / levels)."""
        return math.log2(len(self.codes)) if self.codes else 32.0

    @property
    def exportable(self) -> bool:
        return bool(self.codes)

    @property
    def codes_per_word(self) -> int:
        """Weights held by one 32-bit word: 32 // field bits, or 20 for ternary's 4 bytes (0: not exportable)."""
        if not self.exportable:
            return 0
        return TERNARY_PER_WORD if self.name == "ternary" else 32 // self.field_bits


def _odd(n: int) -> tuple[int, ...]:
    return tuple(range(-n, n + 1, 2))


# scale_per_clip: uniform formats are a 2^B-level quantizer spanning [-clip, clip] (odd codes are
# bin centres, so code v sits at v*clip/2^B); 4bit/8bit/fp130/nf4 put their extreme code at the clip.
FORMATS: dict[str, FormatSpec] = {f.name: f for f in (
    FormatSpec("binary", 0, 1, 1, (-1, 1), True, 1, 2.0),
    FormatSpec("binarybalanced", 1, 1, 1, (-1, 1), True, 1, 2.0),
    FormatSpec("ternary", 2, 1.6, 8, (-1, 0, 1), True, 1, 1.5),   # levels 0, +-2c/3: threshold c/3
    FormatSpec("2bitsym", 3, 2, 2, _odd(3), True, 3, 4.0),
    FormatSpec("4bitsym", 4, 4, 4, _odd(15), True, 15, 16.0),
    FormatSpec("4bit", 5, 4, 4, tuple(range(-8, 8)), False, 8, 8.0),
    FormatSpec("8bit", 6, 8, 8, tuple(range(-128, 128)), False, 128, 128.0),
    FormatSpec("fp130", 7, 4, 4, tuple(sorted(s * 2**e for s in (-1, 1) for e in range(8))), True, 128, 128.0),
    FormatSpec("nf4", 8, 4, 4, NF4_CODES, False, 127, 127.0),
    FormatSpec("none", -1, 32, 0, (), False, 0, 128.0),              # float weights, scaled like 8bit
)}
FORMAT_NAMES = tuple(FORMATS)
# name -> engine id, for the formats an engine runs (every one with an integer form)
FORMAT_IDS = {f.name: f.id for f in FORMATS.values() if f.exportable}
