"""firmware: cross-compiled builds for both targets and placements, the size gate, the stack bound, the
no-multiply scan, the firmware stage, the serial protocol at the byte level, and flash/monitor messages."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from contract.chips import CHIP_NAMES, CHIPS
from engine.header import render_header
from mcu import protocol
from mcu.analysis import Func, Program, analyse, no_multiply_scan, stack_bound
from mcu.build import (CROSS, OBJDUMP, SRC, Firmware, FirmwareError, build, build_demo, compile_objects,
                       fit_kernels, link)
from mcu.flash import FlashError, check_setup
from mcu.monitor import PortError, find_port
from mcu.protocol import ErrorCode, Garbled, Parser, Pong, Result, Type
from pipeline import config
from contract.spec import ModelSpec
from contract.model import PackedModel, from_export, save
from tests.strategies import random_model

from tests.conftest import ROOT

TINY = ModelSpec(kind="fc", image_size=8, widths=(16, 12), formats=("4bitsym",))


def model_of(spec: ModelSpec, seed: int = 1) -> PackedModel:
    return from_export(random_model(spec, seed).export_model())


def swapped_classes(spec: ModelSpec, seed: int, a: int, b: int) -> str:
    """The header of model_of(spec, seed) with the classifier's rows (weights and clips) of classes a and b swapped: the
    same model, its logits a and b exchanged."""
    m = random_model(spec, seed)
    last = m.layers[-1]
    with torch.no_grad():
        last.weight[[a, b]] = last.weight[[b, a]]
        if last.clip.dim():
            last.clip[[a, b]] = last.clip[[b, a]]
    return render_header(from_export(m.export_model()))


@pytest.fixture(scope="module")
def tiny_model() -> PackedModel:
    return model_of(TINY)


def pixels(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def elf_symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run([CROSS + "nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (line.split() for line in out.splitlines()) if len(parts) == 3}


# ---- builds ------------------------------------------------------------------------------------------------

@pytest.mark.riscv
@pytest.mark.parametrize("target", ["ch32v003", "ch32v002"])
@pytest.mark.parametrize("kernels", ["sram", "flash"])
def test_demo_builds_for_each_target_and_placement(tmp_path, tiny_model, target, kernels):
    images, labels = pixels(3, 8)
    b = build(Firmware(target=target, kernels=kernels), tiny_model, tmp_path, images, labels)
    for name in ("firmware.elf", "firmware.bin", "firmware.map", "firmware.lst"):
        assert (tmp_path / name).is_file(), name
    assert b.sizes.flash_used == (tmp_path / "firmware.bin").stat().st_size
    assert b.sizes.ram_used <= (2048 if target == "ch32v003" else 4096)
    syms = elf_symbols(b.elf)
    assert {"fw_halt", "main", "bm_run"} <= set(syms)
    in_sram = syms["bm_fc"] >= 0x20000000
    assert in_sram == (kernels == "sram") and ("bm_fc" in b.sram_functions) == (kernels == "sram")
    assert syms["bm_run"] < 0x20000000                      # the driver stays in flash either way
    assert b.scan == ("passed" if target == "ch32v003" else "not applicable")
    s = b.summary(tmp_path)
    assert s["elf"] == "firmware.elf" and s["images"] == 3 and s["stack_bound"] > 0
    # the banner names what was built
    assert f"target={target} images=3 kernels={kernels}".encode() in (tmp_path / "firmware.bin").read_bytes()


@pytest.mark.riscv
def test_as_many_images_as_fit(tmp_path, tiny_model):
    images, labels = pixels(400, 8)
    b = build_demo(Firmware(), tiny_model, tmp_path, images, labels, count=0)
    assert b.sizes.flash_used <= 16384 < b.sizes.flash_used + b.image_bytes + 4   # one more would not fit
    assert b.images > 1 and b.image_bytes == 65


@pytest.mark.riscv
def test_demo_image_count_is_honoured_or_refused(tmp_path, tiny_model):
    images, labels = pixels(5, 8)
    assert build_demo(Firmware(), tiny_model, tmp_path, images, labels, count=2).images == 2
    with pytest.raises(FirmwareError, match="mcu.demo_images: 9 requested, the test set has 5"):
        build_demo(Firmware(), tiny_model, tmp_path, images, labels, count=9)


@pytest.mark.riscv
def test_serial_build_drives_the_segment_pins(tmp_path, tiny_model):
    pins = ("PC0", "PC1", "PC2", "PC3", "PC4", "PD2", "PA1", "PD4")
    b = build(Firmware(mode="serial", segment_pins=pins, segment_active_low=True), tiny_model, tmp_path)
    cfg = (tmp_path / "build" / "fw_config.h").read_text()
    assert "#define FW_SEG_PINS {16, 17, 18, 19, 20, 26, 1, 28}" in cfg and "#define FW_SEG_ACTIVE_LOW 1" in cfg
    assert "seg_write" in (tmp_path / "firmware.lst").read_text() and "fw_getc" in elf_symbols(b.elf)
    assert b.images == 0 and b.scan == "passed"


@pytest.mark.parametrize("pins, msg", [
    (("PB3",) * 7, r"'PB3' cannot drive a segment \(allowed: PA1, PA2, PC0"),
    (("PD1", "PC1", "PC2", "PC3", "PC4", "PC5", "PC6"), r"'PD1' cannot drive.*PD1 is SWIO"),
    (("PC0", "PC1", "PC2"), r"needs 7 pins \(segments a..g\) or 8 \(a..g, dp\); got 3"),
    (("PC0", "PC1", "PC2", "PC3", "PC4", "PC5", "PC5"), "a pin is listed twice"),
])
def test_segment_pins_are_checked(tmp_path, tiny_model, pins, msg):
    with pytest.raises(FirmwareError, match=msg):
        build(Firmware(mode="serial", segment_pins=pins), tiny_model, tmp_path)


def test_config_rejects_unknown_pin_names():
    with pytest.raises(config.ConfigError, match=r"mcu.segment_pins: unknown value 'PB3' \(allowed: PA1, PA2"):
        config.from_values({"mcu.segment_pins": ["PC0", "PB3"]})


# ---- size gate ---------------------------------------------------------------------------------------------

@pytest.mark.riscv
def test_size_gate_names_the_config_and_prints_the_table(tmp_path):
    big = model_of(ModelSpec(kind="fc", image_size=16, widths=(160, 16), formats=("4bitsym",)))  # 20 KB
    images, labels = pixels(1, 16)
    with pytest.raises(FirmwareError) as e:
        build(Firmware(where="configs/big.yaml"), big, tmp_path, images, labels)
    msg = str(e.value)
    assert "configs/big.yaml (mcu.target ch32v003, mcu.mode demo, mcu.kernels sram" in msg
    assert "the firmware does not fit (flash" in msg
    assert re.search(r"^flash\s+\d+\s+16384\s+-\d+\s+OVER$", msg, re.M), msg
    assert re.search(r"^\.rodata\s+\d+\s+0$", msg, re.M) and "largest in flash: bm_w_fc1 20480" in msg
    assert "mcu.demo_images" in msg and "or mcu.target: ch32v006 (62 KiB flash)" in msg


@pytest.mark.riscv
def test_a_model_too_big_for_16k_runs_on_the_v006(tmp_path):
    """The 20 KB model refused above fits the CH32V006's 62 KiB, and its demo predicts like the C engine."""
    big = model_of(ModelSpec(kind="fc", image_size=16, widths=(160, 16), formats=("4bitsym",)))
    images, labels = pixels(3, 16, seed=2)
    b = build(Firmware(target="ch32v006"), big, tmp_path, images, labels)
    assert 20480 < b.sizes.flash_used <= 63488 and b.sizes.flash_limit == 63488
    emu = _emulator(b.elf, "ch32v006")
    assert emu.run() == "halt"
    preds = [int(m) for m in re.findall(r"img \d+ pred (\d+)", bytes(emu.tx).decode("ascii"))]
    assert preds == _c_engine(big, images, tmp_path)["preds"].tolist()


@pytest.mark.riscv
def test_a_model_far_too_big_gets_the_sizes_not_linker_output(tmp_path):
    huge = model_of(ModelSpec(kind="fc", image_size=16, widths=(2304, 256), formats=("8bit",)))   # 1.2 MB
    with pytest.raises(FirmwareError) as e:
        build(Firmware(target="ch32v002", mode="serial", where="configs/huge.yaml"), huge, tmp_path)
    msg = str(e.value)
    assert msg.startswith("configs/huge.yaml: the firmware does not fit (flash and RAM far exceeded): the model "
                          "alone needs 1,182,") and "the ch32v002 has 16,384 B and 4,096 B" in msg
    assert "overflowed" not in msg and "ld" not in msg.split()


@pytest.mark.riscv
def test_ram_gate_suggests_flash_kernels_and_v002_fits(tmp_path):
    # 400 binary units: 3.3 KB of weights but 2 KB of buffers
    wide = model_of(ModelSpec(kind="fc", image_size=8, widths=(400, 16), formats=("binary",)))
    with pytest.raises(FirmwareError) as e:
        build(Firmware(mode="serial"), wide, tmp_path / "a")
    msg = str(e.value)
    assert "does not fit (RAM)" in msg and re.search(r"^ram\s+\d+\s+2048\s+-\d+\s+OVER$", msg, re.M), msg
    assert "largest in ram: bm_acc_buf 1600" in msg and "use mcu.kernels: fit (those that fit in SRAM) or flash" in msg
    assert build(Firmware(mode="serial", target="ch32v002"), wide, tmp_path / "b").sizes.ram_used <= 4096


# ---- stack bound and no-multiply scan -----------------------------------------------------------------------

def _program(calls: dict[str, list[str]], frames: dict[str, int], indirect=(), taken=()) -> Program:
    funcs = {n: Func(n, 4 * i, calls=set(c), indirect=n in indirect) for i, (n, c) in enumerate(calls.items())}
    return Program(funcs, frames, set(taken), [])


def test_stack_bound_is_the_deepest_path_and_follows_indirect_calls():
    calls = {"reset": ["main"], "main": ["run", "puts"], "run": ["fc"], "fc": [], "puts": [], "dot": [], "big": []}
    frames = {"reset": 0, "main": 16, "run": 40, "fc": 8, "puts": 100, "dot": 90, "big": 500}
    assert stack_bound(_program(calls, frames), "reset") == 16 + 100                # main, puts
    # fc calls through a pointer: any address-taken function may be the target (big is not one)
    assert stack_bound(_program(calls, frames, indirect={"fc"}, taken={"dot"}), "reset") == 16 + 40 + 8 + 90
    calls["fc"] = ["run"]
    with pytest.raises(FirmwareError, match="recursion run -> fc -> run"):
        stack_bound(_program(calls, frames), "reset")


@pytest.mark.riscv
def test_call_graph_of_a_real_build_sees_pointers(tmp_path):
    """Several formats: the engine calls kernels through pointers; their targets come from the relocations."""
    from tests.strategies import MODEL_SPECS

    model = model_of(MODEL_SPECS[1])                      # binary, ternary, 2bitsym, fp130, per_output
    b = build(Firmware(mode="serial", kernels="flash"), model, tmp_path)
    prog = b.prog
    callers = [n for n, f in prog.funcs.items() if f.indirect]
    assert callers and "fw_fault" in prog.taken               # the vector table's entries are addresses too
    assert any(t.startswith("bm__") and t in prog.funcs for t in prog.taken)
    assert b.sizes.stack == stack_bound(prog, "reset") >= prog.frames["main"] + prog.frames["bm_run"]


BAD_C = textwrap.dedent("""
    #include <stdint.h>
    int32_t bm_bad(int32_t a, int32_t b);
    int32_t bm_good(int32_t a, int32_t b);
    volatile int32_t sink;
    __attribute__((noinline)) int32_t bm_bad(int32_t a, int32_t b) { return a OP b; }
    __attribute__((noinline)) int32_t bm_good(int32_t a, int32_t b) { return a + (b << 2); }
    void system_init(void) {}
    void fw_fault(void) { for (;;) {} }
    void fw_halt(void) { for (;;) {} }
    int main(void) { sink = bm_bad(sink, sink + 3) + bm_good(sink, 2); return 0; }
""")


def _bad_program(tmp_path: Path, target: str, op: str) -> Program:
    src = tmp_path / "bad.c"
    src.write_text(BAD_C.replace("OP", op))
    objs = compile_objects([SRC / "start.S", src], tmp_path, target)
    elf = link(objs, tmp_path, target)
    dis = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", "-j", ".text", str(elf)], capture_output=True,
                         text=True, check=True).stdout
    return analyse(dis, objs, tmp_path)


@pytest.mark.riscv
@pytest.mark.parametrize("target, op, found", [
    ("ch32v003", "*", r"bm_bad at 0x[0-9a-f]+: `(jal|j) .*<__mulsi3>`"),
    ("ch32v003", "/", r"bm_bad at 0x[0-9a-f]+: `(jal|j) .*<__divsi3>`"),
    ("ch32v003", "%", r"bm_bad at 0x[0-9a-f]+: `(jal|j) .*<__modsi3>`"),
    ("ch32v002", "*", r"bm_bad at 0x[0-9a-f]+: `mul a0,a0,a1`"),
])
def test_scan_catches_a_variable_multiply_or_divide(tmp_path, target, op, found):
    prog = _bad_program(tmp_path, target, op)
    assert no_multiply_scan(prog, ["bm_good"], "test") == ["bm_good"]           # control: clean code passes
    with pytest.raises(FirmwareError, match=found):
        no_multiply_scan(prog, ["main"], "configs/bad.yaml: ch32v003")          # reached through main's call


@pytest.mark.riscv
def test_scan_sees_the_multiply_of_an_8bit_layer_in_a_v002_build(tmp_path):
    """The real build's scan roots cover the engine: an 8bit layer on the V002 has mul, which the scan sees."""
    model = model_of(ModelSpec(kind="fc", image_size=8, widths=(16, 12), formats=("8bit",)))
    b = build(Firmware(target="ch32v002", mode="serial"), model, tmp_path)
    assert b.scan == "not applicable"
    with pytest.raises(FirmwareError, match=r"no-multiply scan: bm_\w+ at 0x[0-9a-f]+: `mul "):
        no_multiply_scan(b.prog, b.engine_funcs, "ch32v002 as if it were a ch32v003")


# ---- the firmware stage ------------------------------------------------------------------------------------

@pytest.mark.riscv
def test_firmware_stage_summary(tmp_path, tiny_model):
    from pipeline.firmware import run
    from pipeline.graph import STAGES
    from pipeline.stage import Context, StageConfig
    from pipeline.stages import data as data_stage
    from pipeline.stages import export as export_stage

    data, export, out = tmp_path / "data", tmp_path / "export", tmp_path / "out"
    for d in (data, export, out):
        d.mkdir()
    images, labels = pixels(20, 8)
    np.save(data / data_stage.TEST_IMAGES, images)
    np.save(data / data_stage.TEST_LABELS, labels)
    save(tiny_model, export / export_stage.MODEL)
    stage = next(s for s in STAGES if s.name == "firmware")
    cfg = config.from_values({"data.image_size": 8, "model.widths": [16, 12], "mcu.demo_images": 4})
    summary = run(Context(stage, StageConfig(stage, cfg), "k" * 24, out, tmp_path / "work",
                          {"data": data, "export": export}, {"data": "d" * 24, "export": "e" * 24}))
    assert {k: summary[k] for k in ("target", "mode", "kernels", "images", "no_multiply_scan", "flash_limit",
                                    "ram_limit", "elf", "bin")} == dict(
        target="ch32v003", mode="demo", kernels="sram", images=4, no_multiply_scan="passed", flash_limit=16384,
        ram_limit=2048, elf="firmware.elf", bin="firmware.bin")
    assert 0 < summary["stack_bound"] < summary["ram_used"] <= 2048 and summary["flash_used"] <= 16384
    json.dumps(summary)


# ---- protocol, at the byte level ---------------------------------------------------------------------------

def test_frame_layout_and_checksum():
    frame = protocol.encode(Type.IMAGE, bytes([1, 2, 250]))
    assert frame[:5] == b"\xb5\x4d\x01\x03\x00" and frame[5:8] == bytes([1, 2, 250])
    assert sum(frame[2:]) % 256 == 0
    assert protocol.ping_frame() == b"\xb5\x4d\x02\x00\x00\xfe"
    with pytest.raises(protocol.ProtocolError, match="uint8 N x N"):
        protocol.image_frame(np.zeros((4, 5), np.uint8))


def _reply(msg) -> bytes:
    if isinstance(msg, Result):
        return protocol.encode(Type.RESULT, bytes([msg.cls]) + msg.cycles.to_bytes(4, "little") +
                               b"".join(v.to_bytes(4, "little", signed=True) for v in msg.logits))
    if isinstance(msg, Pong):
        return protocol.encode(Type.PONG, bytes([msg.image_size, msg.num_classes,
                                                 CHIPS[msg.target].id]))
    return protocol.encode(Type.ERROR, bytes([msg.code]))


replies = st.one_of(
    st.builds(Result, st.integers(0, 9), st.integers(0, 2**32 - 1),
              st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=12).map(tuple)),
    st.builds(Pong, st.integers(8, 28), st.integers(1, 255), st.sampled_from(CHIP_NAMES)),
    st.builds(protocol.Error, st.sampled_from(list(ErrorCode))))


@given(msgs=st.lists(replies, max_size=6), noise=st.lists(st.binary(max_size=5), min_size=7, max_size=7),
       cuts=st.lists(st.integers(0, 400), max_size=8))
def test_parser_round_trips_through_noise_and_any_split(msgs, noise, cuts):
    # noise between frames must not contain the magic, else it is (rightly) a frame start
    noise = [n.replace(b"\xb5", b"\x00") for n in noise]
    stream = noise[0] + b"".join(_reply(m) + n for m, n in zip(msgs, noise[1:]))
    parser, got = Parser(), []
    for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(stream)]):
        got += parser.feed(stream[a:b])
    assert got == msgs and parser.pending == 0


def test_parser_drops_a_damaged_frame_and_recovers():
    good = _reply(Pong(16, 10, "ch32v003"))
    bad = bytearray(_reply(Result(3, 1000, (1, -2))))
    bad[7] ^= 0x40                                              # one flipped bit in the payload
    parser = Parser()
    out = parser.feed(bytes(bad) + good)
    assert isinstance(out[0], Garbled) and out[0].reason == "bad checksum" and out[1:] == [Pong(16, 10, "ch32v003")]
    # a truncated frame waits for its end; an impossible length is noise
    assert parser.feed(good[:-1]) == [] and parser.pending == len(good) - 1
    assert parser.feed(good[-1:]) == [Pong(16, 10, "ch32v003")]
    out = Parser(max_payload=64).feed(b"\xb5\x4d\x81\xff\xff" + good)
    assert isinstance(out[0], Garbled) and out[1:] == [Pong(16, 10, "ch32v003")]
    # a well-formed frame whose payload its type cannot have
    assert isinstance(Parser().feed(protocol.encode(Type.PONG, b"\x01"))[0], Garbled)


# ---- flash and monitor: no probe, no tool, no port ------------------------------------------------------------

def _usb(tmp_path: Path, *ids: tuple[int, int]) -> Path:
    for i, (v, p) in enumerate(ids):
        d = tmp_path / f"1-{i}"
        d.mkdir(parents=True)
        (d / "idVendor").write_text(f"{v:04x}\n")
        (d / "idProduct").write_text(f"{p:04x}\n")
    (tmp_path / "usb1").mkdir(exist_ok=True)                   # a hub entry without ids
    return tmp_path


def test_flash_without_probe_says_what_is_missing(tmp_path):
    with pytest.raises(FlashError, match=r"no WCH-LinkE found \(USB 1a86:8010"):
        check_setup(_usb(tmp_path, (0x1D6B, 0x0002)))


def test_flash_with_probe_in_arm_mode_says_how_to_switch(tmp_path):
    with pytest.raises(FlashError, match=r"ARM mode \(USB 1a86:8012\): switch it to RISC-V mode"):
        check_setup(_usb(tmp_path, (0x1A86, 0x8012)))


def test_flash_with_probe_and_no_tool(tmp_path, monkeypatch):
    monkeypatch.setattr("mcu.flash.find_tool", lambda: None)
    with pytest.raises(FlashError, match=r"no flashing tool found: `pip install rvprog`") as e:
        check_setup(_usb(tmp_path, (0x1A86, 0x8010)))
    assert "WCH-LinkE" not in str(e.value)


def test_monitor_port_choice(tmp_path):
    with pytest.raises(PortError, match=r"no serial port found .*port=/dev/ttyUSB0 \(doit monitor; or the config key mcu.port\) or --port /dev/ttyUSB0"):
        find_port(None, (str(tmp_path / "ttyUSB*"),))
    (tmp_path / "ttyACM3").touch()
    (tmp_path / "ttyACM1").touch()
    assert find_port(None, (str(tmp_path / "ttyUSB*"), str(tmp_path / "ttyACM*"))) == str(tmp_path / "ttyACM1")
    assert find_port("/dev/ttyS9", ()) == "/dev/ttyS9"


def _doit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BITMCU_ARTIFACTS": str(tmp_path / "artifacts")}
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.skipif(any(p.name for p in Path("/dev").glob("ttyUSB*")) or
                    (Path("/sys/bus/usb/devices").is_dir() and "8010" in subprocess.run(
                        "cat /sys/bus/usb/devices/*/idProduct 2>/dev/null", shell=True, capture_output=True,
                        text=True).stdout), reason="a probe or serial adapter is attached")
def test_doit_flash_and_monitor_fail_cleanly_without_hardware(tmp_path):
    r = _doit(tmp_path, "cfg=configs/tiny.yaml", "flash")
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr
    assert "cannot flash: no WCH-LinkE found" in r.stderr and ". firmware" not in r.stdout   # failed before building
    r = _doit(tmp_path, "cfg=configs/tiny.yaml", "monitor")
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr
    assert "no serial port found" in r.stderr
    r = _doit(tmp_path, "cfg=configs/tiny.yaml", "monitor", "port=/nonexistent/ttyUSB7")
    assert r.returncode != 0 and "cannot open serial port /nonexistent/ttyUSB7" in r.stderr


# ---- pipeline.send: image conversion and the exchange ---------------------------------------------------------------

def test_png_is_downscaled_like_the_data_stage(tmp_path):
    from PIL import Image

    from pipeline.send import load_png
    from pipeline.data import downscale

    digit = np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(digit).save(tmp_path / "d.png")
    assert np.array_equal(load_png(tmp_path / "d.png", 16), downscale(digit[None], 16)[0])
    assert np.array_equal(load_png(tmp_path / "d.png", 16, invert=True), downscale(255 - digit[None], 16)[0])
    wide = np.zeros((10, 20), np.uint8)
    wide[:, 5:15] = 200
    Image.fromarray(wide).convert("RGB").save(tmp_path / "w.png")
    square = np.zeros((20, 20), np.uint8)
    square[5:15, 5:15] = 200
    assert np.array_equal(load_png(tmp_path / "w.png", 8), downscale(square[None], 8)[0])


class ScriptedLink:
    """Answers like a board would, from the frames it is sent."""

    def __init__(self):
        self.sent = []

    def exchange(self, frame: bytes):
        self.sent.append(frame)
        if frame == protocol.ping_frame():
            return Pong(8, 10, "ch32v002")
        return Parser().feed(_reply(Result(frame[5] % 10, 1234, tuple(range(10)))))[0]


def test_send_pings_then_sends_each_image(tmp_path):
    import io

    from PIL import Image

    from pipeline.backends import FirmwareBackend
    from pipeline.send import header, send

    for i in range(2):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    link, out = ScriptedLink(), io.StringIO()
    board = FirmwareBackend(link, "board")
    answers = send(board, [str(tmp_path / "0.png"), str(tmp_path / "1.png")], raw=True, out=out)
    assert link.sent[0] == protocol.ping_frame() and [len(f) for f in link.sent[1:]] == [6 + 64] * 2
    assert link.sent[2][5:69] == bytes([40] * 64) and answers[1].cycles == 1234 and answers[1].cls == 0
    assert header(board) == "firmware: ch32v002, 8x8 images, 10 classes (board)"
    assert f"{tmp_path / '1.png'}: class 0, logits [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 1234 cycles = 0.026 ms at 48 MHz" \
        in out.getvalue()


# ---- end to end in the emulator (mcu/emulator.py) ---------------------------------------------------------------

def _emulator(elf: Path, target: str):
    from mcu.emulator import Emulator

    return Emulator(elf, target)


def _c_engine(model: PackedModel, images: np.ndarray, tmp_path: Path) -> dict:
    from engine.build import build_library, load_library, run_c

    return run_c(load_library(build_library(render_header(model), tmp_path / "lib")), images, trace=False)


@pytest.mark.riscv
@pytest.mark.parametrize("target, kernels", [("ch32v003", "sram"), ("ch32v002", "flash"), ("ch32v006", "sram")])
def test_demo_in_the_emulator_predicts_like_the_c_engine(tmp_path, tiny_model, target, kernels):
    images, labels = pixels(6, 8, seed=5)
    b = build(Firmware(target=target, kernels=kernels), tiny_model, tmp_path, images, labels)
    emu = _emulator(b.elf, target)
    assert emu.run() == "halt"
    lines = bytes(emu.tx).decode("ascii").split("\r\n")
    assert lines[0] == f"bitmcu demo target={target} images=6 kernels={kernels}" and lines[-1] == ""
    rows = [re.fullmatch(r"img (\d+) pred (\d+) label (\d+) cycles (\d+)", line) for line in lines[1:7]]
    assert all(rows), lines
    want = _c_engine(tiny_model, images, tmp_path)["preds"]
    assert [int(r.group(1)) for r in rows] == list(range(6))
    assert [int(r.group(2)) for r in rows] == want.tolist()
    assert [int(r.group(3)) for r in rows] == labels.tolist()
    cycles = [int(r.group(4)) for r in rows]
    correct = int((want == labels).sum())
    assert lines[7] == f"done correct {correct} of 6 cycles_min {min(cycles)} cycles_max {max(cycles)}"
    assert min(cycles) > 1000


@pytest.mark.riscv
def test_serial_firmware_answers_and_survives_bad_frames(tmp_path, tiny_model):
    b = build(Firmware(target="ch32v003", mode="serial"), tiny_model, tmp_path)
    emu, parser = _emulator(b.elf, "ch32v003"), Parser()
    assert emu.run() == "idle" and bytes(emu.tx) == b""                  # silent until a frame arrives
    seen = 0

    def send(data: bytes, expire: bool = False):
        nonlocal seen
        emu.feed(data)
        assert emu.run(expire_timeouts=expire) == "idle"
        tx = bytes(emu.tx)
        got, seen = parser.feed(tx[seen:]), len(tx)
        return got

    images, _ = pixels(2, 8, seed=9)
    want = _c_engine(tiny_model, images, tmp_path)
    assert send(protocol.ping_frame()) == [Pong(8, 10, "ch32v003")]
    for i in range(2):
        got = send(b"\x00\x4d\xb5\x13" + protocol.image_frame(images[i]))   # noise first: skipped
        assert len(got) == 1 and got[0].logits == tuple(want["logits"][i]) and got[0].cls == want["preds"][i]
        assert got[0].cycles > 1000
    bad = bytearray(protocol.image_frame(images[0]))
    bad[10] ^= 0x01
    assert send(bytes(bad)) == [protocol.Error(ErrorCode.BAD_CHECKSUM)]
    assert send(protocol.encode(Type.IMAGE, bytes(63))) == [protocol.Error(ErrorCode.BAD_LENGTH)]
    assert send(protocol.encode(Type.IMAGE, bytes(65))) == [protocol.Error(ErrorCode.BAD_LENGTH)]
    assert send(protocol.encode(Type.PING, b"\x00")) == [protocol.Error(ErrorCode.BAD_LENGTH)]
    assert send(protocol.encode(0x7F, b"xyz")) == [protocol.Error(ErrorCode.UNKNOWN_TYPE)]
    assert send(protocol.encode(Type.RESULT)) == [protocol.Error(ErrorCode.UNKNOWN_TYPE)]
    assert send(protocol.image_frame(images[1])[:30]) == []                 # waits for the rest ...
    assert send(b"", expire=True) == [protocol.Error(ErrorCode.TRUNCATED)]  # ... until 50 ms pass
    assert send(b"\xb5", expire=True) == []                                 # half a magic: no frame, no error
    assert send(b"\xb5" + protocol.ping_frame()) == [Pong(8, 10, "ch32v003")]
    got = send(protocol.image_frame(images[1]))
    assert got[0].logits == tuple(want["logits"][1]) and parser.skipped == 0


@pytest.mark.riscv
def test_send_command_against_the_emulator(tmp_path, tiny_model, capsys):
    from PIL import Image

    from pipeline.send import main

    b = build(Firmware(target="ch32v002", mode="serial"), tiny_model, tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps(b.summary(tmp_path)))
    img = pixels(1, 8, seed=2)[0][0]
    Image.fromarray(img).save(tmp_path / "x.png")
    want = _c_engine(tiny_model, img[None], tmp_path)
    assert main(["--emulator", str(tmp_path), "--raw", str(tmp_path / "x.png")]) == 0  # random pixels: no digit to find
    out = capsys.readouterr().out
    assert "firmware: ch32v002, 8x8 images, 10 classes (emulator)" in out
    assert f"class {want['preds'][0]}, logits {want['logits'][0].tolist()}, " in out and " cycles = " in out
    for raw, message in (["--raw"], "no.png: cannot be read as an image"), ([], "no.png: cannot be read (No such file"):
        assert main(["--emulator", str(tmp_path / "firmware.elf"), "--target", "ch32v002", *raw,
                     str(tmp_path / "no.png")]) == 1
        assert message in capsys.readouterr().err


@pytest.mark.riscv
def test_emulate_stage_compares_with_the_c_engine_and_catches_a_different_model(tmp_path, tiny_model):
    from engine.build import build_library, load_library, run_c
    from mcu.emulator import Emulator
    from pipeline.emulate import EmulateError, _demo

    images, labels = pixels(4, 8, seed=3)
    b = build(Firmware(target="ch32v003"), tiny_model, tmp_path / "fw", images, labels)
    fw = b.summary(tmp_path / "fw")
    same = load_library(build_library(render_header(tiny_model), tmp_path / "same"))
    res = _demo(Emulator(b.elf, "ch32v003"), fw, images, labels, same, lambda _: None)
    assert res["images"] == 4 and res["instructions"]["min"] > 1000 and res["cycles"]["min"] > res["instructions"]["min"]
    # a model built to differ: the firmware's, with the classifier rows of image 0's class and of its lowest
    # logit swapped, so that the two logits trade places and image 0 gets another class
    logits = run_c(same, images, trace=False)["logits"][0]
    top, low = int(np.argmax(logits)), int(np.argmin(logits))
    assert logits[top] > logits[low]
    other = load_library(build_library(swapped_classes(TINY, 1, top, low), tmp_path / "other"))
    got = run_c(other, images, trace=False)["logits"]
    perm = np.arange(len(logits))
    perm[[top, low]] = [low, top]
    assert np.array_equal(got[0], logits[perm]) and int(np.argmax(got[0])) != top
    with pytest.raises(EmulateError, match="emulated firmware predicts .* for test image"):
        _demo(Emulator(b.elf, "ch32v003"), fw, images, labels, other, lambda _: None)


def test_fit_kernels_takes_the_hottest_that_fit():
    sizes = {"bm__rows_nib": 146, "bm__conv_pool": 722, "bm__conv_q": 516, "bm__tab_2bitsym": 110, "bm_fc": 176}
    assert fit_kernels(sizes, 600) == ["bm__conv_q"]
    assert fit_kernels(sizes, 1000) == ["bm__conv_q", "bm__rows_nib", "bm__tab_2bitsym", "bm_fc"]
    assert fit_kernels(sizes, 2000) == ["bm__conv_q", "bm__conv_pool", "bm__rows_nib", "bm__tab_2bitsym", "bm_fc"]
    assert fit_kernels(sizes, 100) == []


# ---- the CNN on the chips: channel-streamed conv kernels in SRAM -------------------------------------------
CNN_FORMATS = {"ch32v003": ("fp130", "2bitsym", "4bitsym", "4bitsym", "4bitsym"),    # multiplier-free
               "ch32v002": ("8bit", "8bit", "8bit", "2bitsym", "4bitsym")}              # cnn32's formats


@pytest.mark.riscv
@pytest.mark.parametrize("target", ["ch32v003", "ch32v002"])
def test_cnn_firmware_gives_the_c_engines_logits(tmp_path, target):
    """A small CNN (16x16, 3 channels, per_output shifts) as serial firmware: every logit of every image equals
    the host C engine's, images repeated and reordered so that the guessed shifts are right and wrong; its
    256-byte conv map holds the fc tables and the received image; on the CH32V003 (mcu.kernels: fit, conv1's
    kernel first in SRAM) the inference code has no multiply."""
    from engine.build import build_library, load_library
    from pipeline.emulate import _serial

    spec = ModelSpec(kind="cnn", image_size=16, cnn_channels=3, widths=(6,), formats=CNN_FORMATS[target],
                     scaling="per_output")
    model = model_of(spec, seed=4)
    kernels = "fit" if target == "ch32v003" else "sram"    # 2 KB of RAM: not every kernel fits with a CNN
    b = build(Firmware(target=target, mode="serial", kernels=kernels), model, tmp_path)
    assert b.scan == ("passed" if target == "ch32v003" else "not applicable")
    assert b.sram_functions[:1] == ["bm__conv_q"] if kernels == "fit" else \
        {"bm__conv_q", "bm__conv_pool"} <= set(b.sram_functions)
    assert b.sizes.ram_used <= CHIPS[target].ram
    images, labels = pixels(5, 16, seed=9)
    images[0] = 0
    images = np.concatenate([images, images[:1], images[::-1], images[2:3]])
    lib = load_library(build_library(render_header(model), tmp_path / "lib"))
    res = _serial(_emulator(b.elf, target), images, np.resize(labels, len(images)), lib)   # raises on a difference
    assert res["images"] == len(images)
