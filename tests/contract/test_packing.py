"""contract/packing.py: CONTRACT §9 words, by hand-derived known answers, a bit-by-bit twin and round trips."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.packing import code_to_field, field_to_code, pack, row_words, unpack
from contract.formats import FORMATS
from tests import naive
from tests.strategies import EXPORTABLE, codes, formats

# One row each; word values derived by hand from §9 (fields LSB first).
KNOWN = [
    # 4bitsym sign-magnitude nibbles 1->0 -1->8 15->7 -15->F 3->1 -3->9 5->2 -5->A, read MSB..LSB
    ("4bitsym", [1, -1, 15, -15, 3, -3, 5, -5], [0xA291F780]),
    ("binary", [1, -1, -1, 1, 1], [0b11001]),
    ("binarybalanced", [-1] * 31 + [1], [0x80000000]),
    # 2bitsym fields 3->01 -3->11 1->00 -1->10: 1 | 3<<2 | 0<<4 | 2<<6
    ("2bitsym", [3, -3, 1, -1], [0x8D]),
    ("4bit", [-8, 7, -1, 0], [0x0F78]),
    ("8bit", [-128, 127, -1, 1], [0x01FF7F80]),
    # fp130 1->0 -1->8 128->7 -128->F 2->1
    ("fp130", [1, -1, 128, -128, 2], [0x1F780]),
    # nf4 indices -127->0 127->15 0->7 10->8
    ("nf4", [-127, 127, 0, 10], [0x87F0]),
    # ternary digits 1,2,0,1,2 -> 1 + 2*3 + 0*9 + 1*27 + 2*81 = 196 = 0xC4; 6th weight (+1) opens byte 1
    ("ternary", [1, -1, 0, 1, -1, 1], [0x01C4]),
    # 21 ternary weights: 20 in word 0 (four bytes of 242 = all -1), the 21st (+1) in word 1
    ("ternary", [-1] * 20 + [1], [0xF2F2F2F2, 0x1]),
    # 9 nibbles: the 9th spills into word 1
    ("4bitsym", [-15] * 8 + [15], [0xFFFFFFFF, 0x7]),
]


@pytest.mark.parametrize("fmt,row,want", KNOWN, ids=[f"{k[0]}-{len(k[1])}" for k in KNOWN])
def test_known_answer(fmt, row, want):
    words, rw = pack(np.array([row]), fmt)
    assert words.dtype == np.uint32 and rw == len(want)
    assert [hex(int(w)) for w in words] == [hex(w) for w in want]
    assert unpack(words, fmt, 1, len(row)).tolist() == [row]


def test_rows_are_word_aligned():
    rows = np.array([[1, -1, 3, -3, 5, -5, 7, -7, 9], [15] * 9])      # 9 nibbles -> 2 words per row
    words, rw = pack(rows, "4bitsym")
    assert rw == 2 and words.tolist() == [pack(rows[:1], "4bitsym")[0][0], 0x4,  # row 0: 9 -> m=4 in word 1
                                          0x77777777, 0x7]


@pytest.mark.parametrize("fmt", EXPORTABLE)
def test_every_code_round_trips_through_its_field(fmt):
    c = np.array(FORMATS[fmt].codes)
    f = code_to_field(c, fmt)
    assert len(set(f.tolist())) == len(c)                               # fields are distinct
    assert field_to_code(f, fmt).tolist() == c.tolist()


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_pack_matches_bitwise_twin_and_round_trips(data):
    fmt = data.draw(formats())
    n_out, n_in = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 70))
    c = data.draw(codes(fmt, n_out, n_in))
    words, rw = pack(c, fmt)
    want, want_rw = naive.pack(c.tolist(), fmt)
    assert rw == want_rw == row_words(n_in, fmt) and words.tolist() == want
    assert np.array_equal(unpack(words, fmt, n_out, n_in), c)


@settings(max_examples=30, deadline=None)
@given(formats(), st.integers(1, 45))
def test_padding_is_zero(fmt, n_in):
    """Zero bits (ternary: trit 0) after the last weight of every row."""
    words, rw = pack(np.full((2, n_in), FORMATS[fmt].codes[0]), fmt)
    per = 20 if fmt == "ternary" else 32 // naive.BITS[fmt]
    used = n_in - (rw - 1) * per                                        # weights in a row's last word
    last = words.reshape(2, rw)[:, -1].astype(np.int64)
    if fmt == "ternary":
        full_bytes, trits = divmod(used, 5)
        for r in range(2):
            for byte in range(4):
                v = (int(last[r]) >> (8 * byte)) & 0xFF
                digits = [(v // 3**k) % 3 for k in range(5)]
                n_used = 5 if byte < full_bytes else trits if byte == full_bytes else 0
                assert all(d == 0 for d in digits[n_used:]), (hex(int(last[r])), byte)
    else:
        assert (last >> (used * naive.BITS[fmt]) == 0).all()


@pytest.mark.parametrize("fmt,bad", [("4bitsym", 2), ("4bitsym", 17), ("2bitsym", 0), ("binary", 0),
                                     ("ternary", 2), ("4bit", 8), ("8bit", 128), ("fp130", 3),
                                     ("nf4", 11), ("binarybalanced", 2)])
def test_bad_code_rejected(fmt, bad):
    with pytest.raises(ValueError, match=rf"code {bad} .*not a {fmt} code"):
        pack(np.array([[FORMATS[fmt].codes[-1], bad]]), fmt)


def test_bad_format_and_shape_rejected():
    with pytest.raises(ValueError, match="'none'"):
        pack(np.array([[1]]), "none")
    with pytest.raises(ValueError, match="'int3'"):
        pack(np.array([[1]]), "int3")
    with pytest.raises(ValueError, match="2-D"):
        pack(np.array([1, -1]), "binary")
    with pytest.raises(ValueError, match="integer"):
        pack(np.array([[1.0]]), "binary")


def test_unpack_rejects_bad_words():
    with pytest.raises(ValueError, match="length 2"):
        unpack(np.zeros(3, np.uint32), "4bitsym", 1, 9)
    with pytest.raises(ValueError, match="padding"):
        unpack(np.array([0x10], np.uint32), "4bitsym", 1, 1)
    with pytest.raises(ValueError, match="exceeds 242"):
        unpack(np.array([0xF3], np.uint32), "ternary", 1, 5)
