"""Cross-compile the bitmcu firmware (mcu/src + engine/bitmcu.c + a generated model.h) and gate it.

`build(fw, model, out)` compiles with Debian's riscv64-unknown-elf-gcc for one target, links with
mcu/src/link.ld and writes firmware.elf, firmware.bin, firmware.map and firmware.lst (disassembly
with source) to out. Then it checks what the chip can hold (mcu/analysis.py): flash used (every
byte of the .bin: code, constants, the load images of .data and .ramfunc) against 16,384 bytes,
and RAM used (.ramfunc, .data, .bss and a stack bound from -fstack-usage along the call graph)
against the target's SRAM. A build that does not fit raises FirmwareError with a table of regions
and sections. On the CH32V003 a disassembly scan proves that the inference code (every function of
engine/bitmcu.c in the image, and everything it calls) has no mul/div/rem instruction and calls no
multiply or divide helper.

mcu.kernels: sram renames the kernels' sections (SRAM_KERNELS, the loops over the weights) to
.ramfunc.<name>, which link.ld loads in flash and start.S copies to SRAM: code fetched from SRAM
runs without the flash wait state (WCH's CH32V003 reference manual, FLASH_ACTLR). mcu.kernels: fit
moves those that fit in the SRAM the firmware leaves free, hottest first (FIT_ORDER), and the rest
stay in flash: on the CH32V003 a CNN's conv1 kernel fits where all of them do not.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from elftools.elf.elffile import ELFFile

from contract.chips import CHIPS, RISCV_NAMES
from contract.layout import layout
from contract.model import PackedModel
from engine.header import format_masks, render_header
from mcu.analysis import FirmwareError, Program, SizeReport, analyse, no_multiply_scan, stack_bound
from mcu.fit import demo_build

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "mcu" / "src"
ENGINE = ROOT / "engine"
SOURCES = {"demo": ("start.S", "system.c", "demo.c"), "serial": ("start.S", "system.c", "serial.c")}
# Debian's toolchain prefix unless BITMCU_CROSS names another (flake.nix's shell: riscv64-none-elf-)
CROSS = os.environ.get("BITMCU_CROSS", "riscv64-unknown-elf-")
CC, OBJCOPY, OBJDUMP = CROSS + "gcc", CROSS + "objcopy", CROSS + "objdump"
CFLAGS = ["-Os", "-g", "-std=c99", "-ffreestanding", "-nostdlib", "-nostartfiles", "-ffunction-sections",
          "-fdata-sections", "-fstack-usage", "-Wall", "-Wextra", "-Werror"]
# The loops over the weights (row dot products, fc and conv kernels and their helpers): the code
# that runs per weight. Everything else in bitmcu.c runs per layer or per activation. The conv
# kernels (bm__conv_*: the channel loops, the window gather, the once-per-channel weight decoder) go
# to SRAM only for a model with conv layers.
SRAM_KERNELS = re.compile(r"^(bm_fc|bm__(dot|fc|tab|rows|out_shift)\w*)(\.\w+)*$")
SRAM_CONV_KERNELS = re.compile(r"^(bm_conv3x3|bm__conv\w*)(\.\w+)*$")
# mcu.kernels: fit takes the kernels in this order (the first pattern a name matches): a CNN's conv kernels
# take most of its time (conv1's bm__conv_q most, benchmarks/cnn_cycles.py), then the fc loops
FIT_ORDER = [re.compile(p) for p in (r"^bm__conv_q\b", r"^bm__conv_pool\b", r"^bm__rows", r"^bm__tab", r"^bm__dot",
                                     r"^bm__fc", r"^bm__conv", r"")]
KERNEL_PLACES = ("sram", "flash", "fit")
ELF, BIN, MAP, LISTING = "firmware.elf", "firmware.bin", "firmware.map", "firmware.lst"
TOOL_HINT = ("Debian/Ubuntu: apt-get install gcc-riscv64-unknown-elf (./run does it when run as root); "
             "or `nix develop`")


@dataclass(frozen=True)
class Firmware:
    """What to build: the mcu.* settings, and where they came from (named in every error)."""
    target: str = "ch32v003"
    mode: str = "demo"                       # demo | serial
    kernels: str = "sram"                    # sram | flash | fit
    segment_pins: tuple[str, ...] = ()       # serial mode: a..g(, dp) pins, e.g. ("PC0", ...)
    segment_active_low: bool = False
    where: str = "config"                    # the config it came from, for messages

    def __post_init__(self) -> None:
        if self.target in CHIPS and CHIPS[self.target].family != "riscv":
            raise FirmwareError(f"{self.where}: mcu.target {self.target} is a {CHIPS[self.target].family} part; "
                                f"the firmware stage builds for the RISC-V chips {', '.join(RISCV_NAMES)} "
                                "(Padauk parts: mcu/padauk/firmware.py)")
        if self.target not in CHIPS or self.mode not in SOURCES or self.kernels not in KERNEL_PLACES:
            raise FirmwareError(f"{self.where}: unknown firmware target/mode/kernels "
                                f"{self.target}/{self.mode}/{self.kernels}")


@dataclass
class Build:
    """A built firmware; check() gates it. Paths are inside the build's out folder."""
    fw: Firmware
    elf: Path
    bin: Path
    prog: Program
    sizes: SizeReport
    images: int
    image_bytes: int                         # flash per demo image: its pixels and its label
    engine_funcs: list[str]                  # functions of bitmcu.c: the no-multiply scan's roots
    sram_functions: list[str] = field(default_factory=list)
    scan: str = "not run"

    def check(self) -> None:
        """Size gate (FirmwareError with a table), then on a multiplier-free target the scan."""
        fw = self.fw
        what = f"{fw.where} (mcu.target {fw.target}, mcu.mode {fw.mode}, mcu.kernels {fw.kernels}"
        if self.images:
            what += f", {self.images} demo images of {self.image_bytes} bytes each"
        self.sizes.check(what + ")", self._hints())
        if CHIPS[fw.target].multiplier:
            self.scan = "not applicable"
        else:
            no_multiply_scan(self.prog, self.engine_funcs, f"{fw.where}: {fw.target}")
            self.scan = "passed"

    def _hints(self) -> list[str]:
        hints = []
        if self.sizes.flash_used > self.sizes.flash_limit:
            if self.fw.mode == "demo":
                hints.append(f"flash: set mcu.demo_images lower (each image costs {self.image_bytes} bytes; "
                             "0 = as many as fit), or use mcu.mode: serial (no embedded images)")
            hints.append("flash: or train a smaller model (the export stage's layers.txt lists its flash)"
                         + _bigger(self.fw.target, "flash"))
        if self.sizes.ram_used > CHIPS[self.fw.target].ram:
            ramfunc = sum(r["ram"] for r in self.sizes.sections if r["section"] == ".ramfunc")
            if self.fw.kernels == "sram":
                hints.append(f"RAM: use mcu.kernels: fit (those that fit in SRAM) or flash (the kernels' {ramfunc} "
                             "bytes out of SRAM)")
            hints.append("RAM: or a model with smaller activation buffers" + _bigger(self.fw.target, "ram"))
        return hints

    def summary(self, rel_to: Path) -> dict[str, Any]:
        return dict(target=self.fw.target, mode=self.fw.mode, kernels=self.fw.kernels,
                    flash_used=self.sizes.flash_used, flash_limit=self.sizes.flash_limit,
                    ram_used=self.sizes.ram_used, ram_limit=CHIPS[self.fw.target].ram,
                    stack_bound=self.sizes.stack, images=self.images, no_multiply_scan=self.scan,
                    sections=self.sizes.sections, sram_functions=self.sram_functions,
                    unmeasured_frames=self.prog.unmeasured,
                    elf=str(self.elf.relative_to(rel_to)), bin=str(self.bin.relative_to(rel_to)))


def segment_codes(pins: Sequence[str], where: str, target: str) -> list[int]:
    """mcu.segment_pins -> (port letter - 'A') << 3 | pin, checked: 0, 7 or 8 distinct usable pins."""
    allowed = CHIPS[target].pins
    bad = [p for p in pins if p not in allowed]
    if bad:
        raise FirmwareError(f"{where}: mcu.segment_pins: {', '.join(map(repr, bad))} cannot drive a segment "
                            f"(allowed: {', '.join(allowed)}; PD1 is SWIO, PD5/PD6 are USART1, PD7 is NRST)")
    if len(pins) not in (0, 7, 8):
        raise FirmwareError(f"{where}: mcu.segment_pins: needs 7 pins (segments a..g) or 8 (a..g, dp); "
                            f"got {len(pins)}: {list(pins)}")
    if len(set(pins)) != len(pins):
        raise FirmwareError(f"{where}: mcu.segment_pins: a pin is listed twice: {list(pins)}")
    return [((ord(p[1]) - ord("A")) << 3) | int(p[2]) for p in pins]


def _config_header(fw: Firmware, n_images: int) -> str:
    t = CHIPS[fw.target]
    codes = segment_codes(fw.segment_pins, fw.where, fw.target)
    lines = ["/* Generated by mcu/build.py; do not edit. */",
             f'#define FW_TARGET_NAME "{t.name}"', f"#define FW_TARGET_ID {t.id}",
             f"#define FW_FLASH_LATENCY {t.flash_latency}", f'#define FW_KERNELS_NAME "{fw.kernels}"',
             f"#define FW_DEMO_IMAGES {n_images}u", f'#define FW_DEMO_IMAGES_STR "{n_images}"',
             f"#define FW_SEG_COUNT {len(codes)}", f"#define FW_SEG_ACTIVE_LOW {int(fw.segment_active_low)}"]
    if codes:
        lines.append("#define FW_SEG_PINS {" + ", ".join(str(c) for c in codes) + "}")
    return "\n".join(lines) + "\n"


def _images_header(images: np.ndarray, labels: np.ndarray) -> str:
    n, pix = images.shape[0], int(np.prod(images.shape[1:]))
    rows = [", ".join(str(int(v)) for v in im.reshape(-1)) for im in images]
    return ("/* Generated by mcu/build.py: the first test images (uint8, row-major) and their labels. */\n"
            f"static const uint8_t fw_images[{n}][{pix}] = {{\n" + ",\n".join(f"    {{{r}}}" for r in rows) +
            "\n};\n" + f"static const uint8_t fw_labels[{n}] = {{{', '.join(str(int(v)) for v in labels)}}};\n")


def _run(cmd: list[str], what: str) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FirmwareError(f"{cmd[0]} not found: it builds the firmware. {TOOL_HINT}") from None
    if res.returncode != 0:
        raise FirmwareError(f"{what} failed:\n{' '.join(cmd)}\n{res.stderr.strip()}")
    return res.stdout


def compile_objects(sources: Sequence[Path], build_dir: Path, target: str, defines: Sequence[str] = ()) -> list[Path]:
    """Compile C/asm sources for target into build_dir (with .su stack-usage files next to them)."""
    t = CHIPS[target]
    objs = []
    for src in sources:
        obj = build_dir / (src.stem + ".o")
        _run([CC, *t.march, *CFLAGS, *(f"-D{d}" for d in defines), f"-I{build_dir}", f"-I{SRC}", f"-I{ENGINE}",
              "-c", str(src), "-o", str(obj)], f"compiling {src.name} for {target}")
        objs.append(obj)
    return objs


def _bigger(target: str, memory: str) -> str:
    """', or mcu.target: <chips with more of that memory>' ('' when none has more)."""
    have = getattr(CHIPS[target], memory)
    more = [f"{c.name} ({getattr(c, memory) // 1024} KiB {memory.replace('ram', 'SRAM')})"
            for c in (CHIPS[n] for n in RISCV_NAMES) if getattr(c, memory) > have]
    return f", or mcu.target: {' or '.join(more)}" if more else ""


def placement(kernels: str, sram_functions: Sequence[str]) -> str:
    """Where a firmware's kernels run, for messages: "kernels in flash", or with fit the ones it moved."""
    if kernels != "fit":
        return f"kernels in {kernels}"
    return f"kernels fit: {', '.join(sram_functions) or 'none'} in SRAM"


def kernel_sections(obj: Path, conv: bool) -> dict[str, int]:
    """obj's kernel functions that mcu.kernels: sram moves (the conv kernels only for a CNN), with their sizes."""
    with open(obj, "rb") as f:
        secs = {s.name[len(".text."):]: s["sh_size"] for s in ELFFile(f).iter_sections() if s.name.startswith(".text.")}
    return {n: size for n, size in secs.items() if SRAM_KERNELS.match(n) or (conv and SRAM_CONV_KERNELS.match(n))}


def fit_kernels(kernels: dict[str, int], free: int) -> list[str]:
    """The kernels (name: bytes) that mcu.kernels: fit moves into `free` bytes of SRAM: in FIT_ORDER, each that
    still fits (4 bytes of alignment allowed for each)."""
    order = sorted(kernels, key=lambda n: (next(i for i, p in enumerate(FIT_ORDER) if p.match(n)), n))
    chosen = []
    for n in order:
        if kernels[n] + 4 <= free:
            chosen.append(n)
            free -= kernels[n] + 4
    return chosen


def move_to_sram(obj: Path, moved: Sequence[str]) -> list[str]:
    """Rename obj's sections .text.<f> to .ramfunc.<f> for the functions `moved`; returns them."""
    moved = list(moved)
    if moved:
        _run([OBJCOPY, *(f"--rename-section=.text.{m}=.ramfunc.{m}" for m in moved), str(obj)],
             f"moving kernels of {obj.name} to .ramfunc")
    return moved


def link(objs: Sequence[Path], out: Path, target: str) -> Path:
    """Link at 0 with link.ld; regions oversized so an overflow reaches the size gate (link.ld).

    The RV32E libgcc is on the line so that a stray helper call links and the no-multiply scan names
    it; --gc-sections drops it otherwise (our firmware calls none).
    """
    t = CHIPS[target]
    libgcc = _run([CC, "-march=rv32e", "-mabi=ilp32e", "-print-libgcc-file-name"], "locating libgcc").strip()
    elf = out / ELF
    _run([CC, *t.march, "-nostdlib", "-nostartfiles", "-T", str(SRC / "link.ld"),
          f"-Wl,--defsym=__ram_size={t.ram}", "-Wl,--defsym=__flash_region=0x100000",
          "-Wl,--defsym=__ram_region=0x100000", "-Wl,--gc-sections", f"-Wl,-Map={out / MAP}",
          "-Wl,--no-warn-rwx-segments", *map(str, objs), libgcc, "-o", str(elf)], f"linking for {target}")
    return elf


def build(fw: Firmware, model: PackedModel, out: Path, images: np.ndarray | None = None,
          labels: np.ndarray | None = None, gate: bool = True, engine_options: Sequence[str] = ()) -> Build:
    """Build fw for the packed model (its header generated by engine/header.py) into out (demo mode embeds images [n, N, N] and labels [n]).

    engine_options: extra engine/bitmcu.h build options (e.g. "BM_CFG_KERNELS=0"), for benchmarks."""
    if shutil.which(CC) is None:
        raise FirmwareError(f"{CC} not found: it builds the firmware. {TOOL_HINT}")
    t = CHIPS[fw.target]
    out = Path(out)
    work = out / "build"
    work.mkdir(parents=True, exist_ok=True)
    n_images = 0
    if fw.mode == "demo":
        if images is None or labels is None or len(images) < 1 or len(images) != len(labels):
            raise FirmwareError(f"{fw.where}: demo firmware needs at least one image and a label for each")
        n_images = len(images)
        (work / "fw_images.h").write_text(_images_header(images, labels))
    (work / "model.h").write_text(render_header(model))
    (work / "fw_config.h").write_text(_config_header(fw, n_images))
    # only the model's formats, and the CNN driver only for a CNN: flash is 16 KB in all
    masks, conv = format_masks(model), any(lay.kind != "fc" for lay in model.layers)
    defines = [f"BM_CFG_FORMATS={masks['all']}", f"BM_CFG_FC_FORMATS={masks['fc']}",
               f"BM_CFG_CONV_FORMATS={masks['conv']}", f"BM_CFG_CNN={int(conv)}"]
    defines += ([] if t.multiplier else ["BM_CFG_NO_MULTIPLY"]) + list(engine_options)
    if conv:   # the engine builds the fc tables in the dead conv map where it holds them: 256 B less stack
        defines.append(f"BM_CFG_CHAN_BYTES={layout(model)['chan_bytes']}")
    objs = compile_objects([SRC / s for s in SOURCES[fw.mode]] + [ENGINE / "bitmcu.c"], work, fw.target, defines)
    engine_obj = objs[-1]
    engine_funcs = _functions(engine_obj)        # before renaming: what the no-multiply scan covers
    kernels = kernel_sections(engine_obj, conv)
    moved = move_to_sram(engine_obj, list(kernels) if fw.kernels == "sram" else [])
    elf, prog, sizes = _link_and_measure(objs, out, work, fw, model)
    if fw.kernels == "fit":       # the SRAM this image leaves free, for the hottest kernels that fit in it
        moved = move_to_sram(engine_obj, fit_kernels(kernels, t.ram - sizes.ram_used))
        if moved:
            elf, prog, sizes = _link_and_measure(objs, out, work, fw, model)
    binary = out / BIN
    _run([OBJCOPY, "-O", "binary", str(elf), str(binary)], "objcopy")
    (out / LISTING).write_text(_run([OBJDUMP, "-d", "-S", str(elf)], "objdump"))
    in_elf = set(prog.funcs)
    image_bytes = int(images[0].size) + 1 if n_images else 0
    b = Build(fw, elf, binary, prog, sizes, n_images, image_bytes, sorted(engine_funcs & in_elf),
              sorted(m for m in moved if m in in_elf))
    if gate:
        b.check()
    return b


def _link_and_measure(objs: Sequence[Path], out: Path, work: Path, fw: Firmware,
                      model: PackedModel) -> tuple[Path, Program, SizeReport]:
    """Link, disassemble and measure flash, RAM and the stack bound."""
    t = CHIPS[fw.target]
    try:
        elf = link(objs, out, fw.target)
    except FirmwareError as e:
        if "overflowed" not in str(e):
            raise
        sizes = layout(model)     # beyond even the linker's working regions: the model alone tells why
        raise FirmwareError(f"{fw.where}: the firmware does not fit (flash and RAM far exceeded): the model "
                            f"alone needs {sizes['flash_bytes']:,} B of flash and {sizes['ram_bytes']:,} B of "
                            f"buffers; the {t.name} has {t.flash:,} B and {t.ram:,} B. Train a smaller model (the "
                            "export stage's layers.txt lists each layer's flash)") from None
    prog = analyse(_run([OBJDUMP, "-d", "--no-show-raw-insn", "-j", ".text", "-j", ".ramfunc", str(elf)],
                        "objdump"), objs, work)
    return elf, prog, SizeReport.of(elf, t.flash, t.ram, stack_bound(prog, "reset"))


def _functions(obj: Path) -> set[str]:
    with open(obj, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {s.name for s in symtab.iter_symbols() if s["st_info"]["type"] == "STT_FUNC"}


def build_demo(fw: Firmware, model: PackedModel, out: Path, images: np.ndarray, labels: np.ndarray,
               count: int) -> Build:
    """Demo firmware with the first `count` images, or with as many as fit in flash when count is 0."""
    b = demo_build(lambda n: build(fw, model, out, images[:n], labels[:n], gate=False),
                   lambda x: x.sizes.flash_limit - x.sizes.flash_used, int(images[0].size) + 1, len(images),
                   count, fw.where, FirmwareError)
    b.check()
    return b
