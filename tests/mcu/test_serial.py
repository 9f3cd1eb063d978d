"""mcu/src/serial.c in the emulator against byte streams hypothesis makes: valid frames mixed with garbage
(stray bytes and magic pairs, headers with any type and lengths up to 0xFFFF, frames cut short or with
bytes inserted). Every valid frame that starts more than one frame length after the last garbage is
answered, in order, with what the C engine computes."""
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from mcu import protocol
from mcu.build import Firmware, build
from mcu.emulator import Emulator
from tests.mcu.test_build import TINY, _c_engine, model_of, pixels

pytestmark = pytest.mark.riscv
IMAGES, _ = pixels(4, 8, seed=5)
FRAMES = [protocol.image_frame(im) for im in IMAGES]
LONGEST = max(len(f) for f in FRAMES)          # an IMAGE frame: the most a bad header can make the board read


@pytest.fixture(scope="module")
def serial_fw(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    model = model_of(TINY)
    elf = build(Firmware(target="ch32v003", mode="serial"), model, out).elf
    want = _c_engine(model, IMAGES, out / "lib")
    answers = [protocol.Result(int(want["preds"][i]), 0, tuple(int(v) for v in want["logits"][i]))
               for i in range(len(IMAGES))]
    return elf, answers


def _header(ftype: int, length: int) -> bytes:
    return protocol.MAGIC + bytes([ftype]) + length.to_bytes(2, "little")


garbage = st.one_of(
    st.binary(min_size=1, max_size=12),
    st.just(protocol.MAGIC),
    st.builds(_header, st.integers(0, 255), st.integers(0, 0xFFFF)),
    st.builds(lambda i, k: FRAMES[i][:k], st.integers(0, 3), st.integers(1, LONGEST - 1)),   # cut short
    st.builds(lambda i, k, b: FRAMES[i][:k] + b + FRAMES[i][k:], st.integers(0, 3),         # bytes inserted
              st.integers(2, LONGEST - 1), st.binary(min_size=1, max_size=4)),
)
valid = st.one_of(st.just("ping"), st.integers(0, 3))
stream = st.lists(st.one_of(valid.map(lambda v: ("frame", v)), garbage.map(lambda g: ("garbage", g))),
                  min_size=1, max_size=10)


def _answers(elf, data: bytes) -> list:
    emu = Emulator(elf, "ch32v003")
    assert emu.run() == "idle"
    emu.feed(data)
    assert emu.run() == "idle"
    assert emu.run(expire_timeouts=True) == "idle"          # a frame left open times out, as on a board
    return [m for m in protocol.Parser().feed(bytes(emu.tx)) if isinstance(m, (protocol.Result, protocol.Pong))]


@settings(max_examples=40, deadline=None)
@given(stream)
def test_valid_frames_after_garbage_are_answered(serial_fw, segments):
    elf, answers = serial_fw
    data, protected, garbage_end = b"", [], -LONGEST
    for kind, v in segments:
        if kind == "garbage":
            data += v
            garbage_end = len(data)
            continue
        if len(data) >= garbage_end + LONGEST:
            protected.append(protocol.Pong(8, 10, "ch32v003") if v == "ping" else answers[v])
        data += protocol.ping_frame() if v == "ping" else FRAMES[v]
    note(f"stream {data.hex()}")
    got = iter([g if isinstance(g, protocol.Pong) else protocol.Result(g.cls, 0, g.logits)
                for g in _answers(elf, data)])
    missing = [want for want in protected if not any(g == want for g in got)]   # in order: a subsequence
    assert not missing, f"unanswered valid frames {missing}"


def test_a_stray_magic_pair_costs_no_frame(serial_fw):
    """Issue 20's case: two stray bytes before each of 10 frames used to cost 5 of them."""
    elf, answers = serial_fw
    data = b"".join(protocol.MAGIC + FRAMES[i % 4] for i in range(10))
    got = [(r.cls, r.logits) for r in _answers(elf, data)]
    assert got == [(answers[i % 4].cls, answers[i % 4].logits) for i in range(10)]
