"""Where a digit is inferred: the run's C library on the host, its serial-mode firmware in the emulator,
or a board on a serial port. One interface, used by `python -m pipeline.send` and the demo page.

Each backend knows its model's image size and answers an N x N uint8 image with the class, the ten
logits and (firmware only) the cycles the chip counted.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from contract.chips import CHIPS, RISCV_NAMES
from contract.errors import UserError
from mcu import protocol
from mcu.protocol import Message, Parser
from pipeline.store import SUMMARY


@dataclass(frozen=True)
class Answer:
    cls: int
    logits: tuple[int, ...]
    cycles: int | None  # None on the host: the C engine runs natively there
    target: str | None  # the chip whose cycles these are


class Backend(Protocol):
    name: str            # "host", "emulator", "board"
    image_size: int
    num_classes: int

    def infer(self, pixels: np.ndarray) -> Answer: ...


class HostBackend:
    """A run's library stage entry (the C engine and its model as a host shared library)."""

    name = "host"

    def __init__(self, run_dir: Path):
        from engine.build import load_library, model_info
        from pipeline.stages import library

        entry = _stage_entry(run_dir, "library")
        self.lib = load_library(library.library(entry))
        info = model_info(self.lib)
        self.image_size, self.num_classes = info["image_size"], info["num_classes"]
        self.where = str(entry)

    def infer(self, pixels: np.ndarray) -> Answer:
        from engine.build import run_c

        out = run_c(self.lib, _checked(pixels, self.image_size)[None], trace=False)
        return Answer(int(out["preds"][0]), tuple(int(v) for v in out["logits"][0]), None, None)


class Link(Protocol):
    def exchange(self, frame: bytes) -> Message: ...


class SerialLink:
    """A board on a serial port."""

    def __init__(self, port: str, timeout: float = 2.0):
        from mcu.monitor import open_port

        self.ser = open_port(port, timeout=0.05)
        self.timeout = timeout
        self.parser = Parser()

    def exchange(self, frame: bytes) -> Message:
        self.ser.write(frame)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            got = self.parser.feed(self.ser.read(256))
            if got:
                return got[0]
        raise UserError(f"no answer from the board on {self.ser.port} within {self.timeout} s: is it running "
                        "the serial-mode firmware (mcu.mode: serial), and are TX/RX crossed?")


class EmulatorLink:
    """The firmware ELF in mcu.emulator.Emulator."""

    def __init__(self, elf: Path, target: str):
        from mcu.emulator import Emulator

        self.emu = Emulator(elf, target)
        self.parser = Parser()
        self.seen = 0                             # bytes of emu.tx already parsed
        self._run()                               # boot until it waits for the first byte

    def _run(self) -> None:
        reason = self.emu.run()
        if reason != "idle":
            raise UserError(f"the emulated firmware stopped ({reason}) instead of waiting for input: "
                            "is it serial-mode firmware (mcu.mode: serial)?")

    def exchange(self, frame: bytes) -> Message:
        self.emu.feed(frame)
        self._run()
        tx = bytes(self.emu.tx)
        got = self.parser.feed(tx[self.seen:])
        self.seen = len(tx)
        if not got:
            raise UserError("the emulated firmware sent no answer")
        return got[0]


class FirmwareBackend:
    """Serial-mode firmware behind a link: PINGed once for its image size, then one IMAGE frame per digit."""

    def __init__(self, link: Link, name: str):
        self.link, self.name = link, name
        pong = link.exchange(protocol.ping_frame())
        if not isinstance(pong, protocol.Pong):
            raise UserError(f"the firmware did not answer PING with PONG but with {pong}: "
                            "is it serial-mode firmware (mcu.mode: serial)?")
        self.pong = pong
        self.image_size, self.num_classes, self.target = pong.image_size, pong.num_classes, pong.target

    def infer(self, pixels: np.ndarray) -> Answer:
        ans = self.link.exchange(protocol.image_frame(_checked(pixels, self.image_size)))
        if not isinstance(ans, protocol.Result):
            raise UserError(f"the firmware answered the image with {ans}")
        return Answer(int(ans.cls), tuple(int(v) for v in ans.logits), int(ans.cycles), self.target)


def host(run_dir: Path) -> HostBackend:
    return HostBackend(run_dir)


def emulator(path: Path, target: str | None = None) -> FirmwareBackend:
    """A firmware stage folder (or a run folder holding one, or an ELF with target) in the emulator."""
    return FirmwareBackend(EmulatorLink(*emulator_args(path, target)), "emulator")


def board(port: str | None = None) -> FirmwareBackend:
    from mcu.monitor import find_port

    return FirmwareBackend(SerialLink(find_port(port)), "board")


def _checked(pixels: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(pixels)
    if p.dtype != np.uint8 or p.shape != (n, n):
        raise UserError(f"the model takes uint8 {n}x{n} images; got {p.dtype} {p.shape}")
    return np.ascontiguousarray(p)


def _stage_entry(run_dir: Path, stage: str) -> Path:
    """run_dir/<stage> (a run folder such as artifacts/runs/default), or run_dir itself if it is that entry."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such folder; give a run folder such as artifacts/runs/default")
    for entry in (run_dir / stage, run_dir):
        if (entry / SUMMARY).is_file() and entry.resolve().parent.name == stage:
            return entry
    raise UserError(f"{run_dir}: holds no {stage} stage entry; build it with "
                    f"`./run doit cfg=configs/{run_dir.name}.yaml {stage}` (the run folder is named after its config)")


def elf_arch(elf: Path) -> str:
    """The ISA string GCC recorded in the ELF (.riscv.attributes), e.g. rv32e1p9_c2p0_zicsr2p0; '' if none."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".riscv.attributes")
        data = sec.data() if sec is not None else b""
    at = data.find(b"rv32")
    return data[at:data.index(b"\0", at)].decode("ascii", "replace") if at >= 0 else ""


def emulator_args(path: Path, target: str | None) -> tuple[Path, str]:
    """A firmware stage folder or a run folder (its summary names the target) or an ELF with --target; checked."""
    from pipeline.stages import firmware

    hint = ("give a run folder (e.g. artifacts/runs/<run>), its firmware stage folder or its firmware.elf "
            "with --target")
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; {hint}")
    if path.is_dir():
        if (path / "firmware" / SUMMARY).is_file():
            path = path / "firmware"
        if not firmware.elf(path).is_file() or not (path / SUMMARY).is_file():
            raise UserError(f"{path}: not a firmware stage folder (no firmware.elf and summary.json); {hint}")
        built_for = firmware.target(path)
        elf = firmware.elf(path)
    else:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                raise UserError(f"{path}: not an ELF file; {hint}")
        elf, built_for = path, None
    chip = CHIPS[target or built_for or RISCV_NAMES[0]]
    arch = elf_arch(elf)
    has_mul = "_m" in arch or "zmmul" in arch
    if (built_for and target and target != built_for) or (arch and has_mul != chip.multiplier):
        print(f"warning: {elf} was built for {built_for or arch}; emulating it as {chip.name}", file=sys.stderr)
    return elf, chip.name
