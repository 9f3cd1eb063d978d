"""Build the SDCC engine for a Padauk part, gate its size, and run it in the ucsim simulator `spdk`.

`build(model, images, target, out)` renders bm_pdk_model.h (mcu/padauk/header.py) with the images
embedded, compiles mcu/padauk/src/bm_pdk.c with `sdcc -mpdk13` / `-mpdk14` (the chip row's `march`) and
parses the linker's .map. `Build.size_report()` counts ROM words (the footprint of the code and constant
areas; a const byte is a `ret k` word) and RAM bytes (SDCC's pseudo register, static data, the overlaid
leaf locals, the stack) against the chip row, and `Build.check()` raises PadaukSizeError with that table
when the model does not fit. `run(build)` stops spdk at `bmp_done` after every image and reads the logits
(bmp_ram.l), the class (bmp_class), the ticks the image took and the stack's high-water mark (the runner
fills the RAM with a pattern before the reset).
"""
from __future__ import annotations

import re
import subprocess
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.chips import CHIPS, PADAUK_NAMES, Chip
from contract.errors import UserError
from contract.model import PackedModel
from mcu.padauk import tools
from mcu.padauk.header import PdkLayout, pdk_layout, render

SRC = Path(__file__).resolve().parent / "src"
PAINT = 0xA5                  # the RAM fill before the reset: bytes still holding it were never written
# startup -> main -> bmp_pass -> __gptrget, a 2-byte return address each, and a saved a/flags pair (SDCC's
# push af) inside bmp_pass: the stack the gate reserves before a run measures it (6 to 7 B measured)
STACK_RESERVE = 8
ROM_AREAS = ("HOME", "GSINIT", "GSFINAL", "CODE", "CONST")    # relocated program-memory areas of SDCC's pdk port
SIM_TIMEOUT_S = 120
PADAUK_RANDOM_IMAGES = 16     # the CLI's random images to choose from when it embeds as many as fit
MAP, IHX = "bm_pdk.map", "bm_pdk.ihx"      # what sdcc writes for src/bm_pdk.c


class PadaukError(UserError):
    """The SDCC build or the simulator run failed."""


class PadaukSizeError(PadaukError):
    """The model and engine do not fit the chip; the message holds the table of what takes the space."""


@dataclass
class Build:
    target: str
    out: Path
    ihx: Path
    areas: dict[str, tuple[int, int]]          # map area -> (address, size in bytes)
    symbols: dict[str, int]                    # map global -> value (RAM: byte address; ROM: byte address)
    layout: PdkLayout
    n_images: int
    image_bytes: int
    linked: bool                               # sdcc's link succeeded (it fails on an overflow)
    log: str = ""

    @property
    def chip(self) -> Chip:
        return CHIPS[self.target]

    def rom_words(self) -> int:
        """Program words from address 0 to the end of the last program area (bytes in the map, 2 a word)."""
        return _words(max(a + n for name, (a, n) in self.areas.items() if name in ROM_AREAS))

    def static_ram(self) -> int:
        """RAM below the stack: SDCC's pseudo register p, DATA and the overlaid leaf locals (OSEG)."""
        return self.areas["SSEG"][0]

    def size_report(self, stack: int | None = None) -> list[tuple[str, str, int, int]]:
        """Rows (memory, what, used, limit); stack: measured bytes, else STACK_RESERVE."""
        lay = self.layout
        code_w = _words(self.areas["CODE"][1])
        const_w = _words(self.areas["CONST"][1])
        model_w = lay.weight_bytes + lay.shift_bytes + self.n_images * self.image_bytes
        rom = [("weights (a byte a word)", lay.weight_bytes), ("per-output shifts", lay.shift_bytes),
               (f"{self.n_images} test images of {self.image_bytes} bytes", self.n_images * self.image_bytes),
               ("other constants", const_w - model_w), ("engine and library code (CODE)", code_w),
               ("reset, startup and padding", self.rom_words() - code_w - const_w)]
        acts = lay.region_a + lay.region_b
        data = self.areas["DATA"][1]
        ram = [("SDCC pseudo register p", self.areas["DATA"][0]),
               (f"bmp_ram: activations {lay.region_a} + {lay.region_b} B", acts),
               ("engine state and spills (DATA)", data - acts),
               ("leaf locals (OSEG, overlaid)", self.areas.get("OSEG", (0, 0))[1]),
               ("stack (measured)" if stack is not None else "stack (reserved)",
                stack if stack is not None else STACK_RESERVE)]
        rows = [("ROM words", what, n, 0) for what, n in rom] + [("ROM words", "total", self.rom_words(),
                                                                   self.chip.rom_words)]
        rows += [("RAM bytes", what, n, 0) for what, n in ram]
        rows.append(("RAM bytes", "total", sum(n for _, n in ram), self.chip.ram))
        return rows

    def check(self, stack: int | None = None) -> None:
        """Raise PadaukSizeError (with the table) unless ROM and RAM fit the chip."""
        rows = self.size_report(stack)
        over = [r for r in rows if r[1] == "total" and r[2] > r[3]]
        if over:
            what = " and ".join(f"{r[0]} {r[2]} > {r[3]}" for r in over)
            raise PadaukSizeError(f"padauk {self.target}: the model does not fit ({what}):\n{format_table(rows)}\n"
                                  f"use fewer test images (mcu.demo_images; {self.image_bytes} words each, 0 = as "
                                  "many as fit), narrower layers (model.widths), fewer bits per weight (quant.formats: "
                                  "2bitsym, ternary, binary) or quant.scaling: per_tensor (no shift table)"
                                  + (", or the pfs154 (mcu.target)" if self.target == "pms150c" else ""))
        if not self.linked:
            raise PadaukError(f"padauk {self.target}: sdcc failed:\n{self.log}")


def _words(n_bytes: int) -> int:
    """Program words of n bytes of a program area (the map counts 2 bytes a word)."""
    return -(-n_bytes // 2)


def format_table(rows: list[tuple[str, str, int, int]]) -> str:
    lines = [f"  {'memory':<10} {'what':<38} {'used':>6} {'limit':>6}"]
    for mem, what, used, limit in rows:
        lines.append(f"  {mem:<10} {what:<38} {used:>6} {limit if limit else '':>6}")
    return "\n".join(lines)


def parse_map(text: str) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """SDCC's .map: areas (address, size) and global symbol values."""
    areas = {m[1]: (int(m[2], 16), int(m[3], 16))
             for m in re.finditer(r"^(\w+)\s+([0-9A-F]{8})\s+([0-9A-F]{8}) =\s+\d+\. bytes", text, re.M)}
    symbols = {m[2]: int(m[1], 16) for m in re.finditer(r"^\s+([0-9A-F]{8})\s+(\S+)", text, re.M)}
    return areas, symbols


def build(model: PackedModel, images: np.ndarray, target: str, out: Path, gate: bool = True) -> Build:
    """Compile the engine with the model and images for target into out; gate its size unless told not to."""
    if target not in PADAUK_NAMES:
        raise PadaukError(f"padauk: target {target!r}: allowed {', '.join(PADAUK_NAMES)}")
    sdcc = tools.find_sdcc()
    if sdcc is None:
        raise PadaukError("sdcc not found: run `python -m mcu.padauk.tools` (as root on Debian: apt-get install sdcc)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bm_pdk_model.h").write_text(render(model, images))
    for old in out.glob("bm_pdk.*"):               # a stale .map must not pass for this build's
        old.unlink()
    res = subprocess.run([str(sdcc), *CHIPS[target].march, "--std-c99", f"-I{out}", f"-I{SRC}",
                          "-o", f"{out}/", str(SRC / "bm_pdk.c")], capture_output=True, text=True)
    if not (out / MAP).is_file():
        raise PadaukError(f"padauk {target}: sdcc failed:\n{res.stdout}{res.stderr}")
    b = load(out, model, target, len(images), linked=res.returncode == 0, log=(res.stdout + res.stderr).strip())
    if gate:
        b.check()
    return b


def load(out: Path, model: PackedModel, target: str, n_images: int, linked: bool = True, log: str = "") -> Build:
    """The build in folder out (its .map and .ihx) of model with n_images embedded images."""
    areas, symbols = parse_map((Path(out) / MAP).read_text())
    return Build(target=target, out=Path(out), ihx=Path(out) / IHX, areas=areas, symbols=symbols,
                 layout=pdk_layout(model), n_images=n_images, image_bytes=model.image_size ** 2,
                 linked=linked, log=log)


@dataclass
class Result:
    preds: np.ndarray                   # int64 [B]
    logits: np.ndarray                  # int64 [B, classes]
    ticks: np.ndarray                   # int64 [B]: simulator ticks from one image's start to bmp_done
    startup_ticks: int                  # reset to main
    stack_bytes: int                    # the stack's high-water mark over the run
    ram_used: int                       # static RAM + stack_bytes


def run(b: Build, num_classes: int = 10) -> Result:
    """Run every embedded image in spdk; raises PadaukError on a stop other than bmp_done, and
    PadaukSizeError when the measured stack overflows the chip's RAM."""
    spdk = tools.find_spdk()
    if spdk is None:
        raise PadaukError(tools.manual_steps())
    if not b.linked:
        raise PadaukError(f"padauk {b.target}: the build did not link; nothing to run:\n{b.log}")
    ram, top = b.chip.ram, b.chip.ram - 1

    def word(sym: str) -> int:                        # code addresses: map bytes -> simulator words
        return b.symbols[sym] // 2

    cmds = [f"fill ram 0 {top} {PAINT}", f"break {word('_main')}", f"break {word('_bmp_done')}", "run"]
    cmds += ["run", f"dump /h ram 0 {top} 16"] * b.n_images + ["quit"]
    argv = [str(spdk), "-t", b.chip.isa, *(x for c in cmds for x in ("-e", c)), str(b.ihx)]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=SIM_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise PadaukError(f"padauk {b.target}: spdk ran past {SIM_TIMEOUT_S} s") from e
    stops = re.findall(r"^Stop at 0x([0-9a-f]+): \((\d+)\) (.*)$", res.stdout, re.M)
    if any(why.startswith("Stack overflow") for _, _, why in stops):
        b.check(stack=ram - b.static_ram() + 1)     # the stack ran past the RAM: the size error, with its table
    ticks = [int(t) for t in re.findall(r"^Simulated (\d+) ticks", res.stdout, re.M)]
    want = [word("_main")] + [word("_bmp_done")] * b.n_images
    if [int(a, 16) for a, _, _ in stops] != want or len(ticks) != len(want):
        raise PadaukError(f"padauk {b.target}: spdk stopped at {stops} (ticks {ticks}); want the breakpoints "
                          f"{[hex(a) for a in want]}:\n{res.stdout[-3000:]}{res.stderr[-2000:]}")
    dumps = _dumps(res.stdout, ram)
    if len(dumps) != b.n_images:
        raise PadaukError(f"padauk {b.target}: {len(dumps)} RAM dumps for {b.n_images} images")
    acc_bytes = b.layout.acc_bits // 8
    base, sseg = b.symbols["_bmp_ram"], b.static_ram()
    logits = np.array([np.frombuffer(bytes(d[base:base + num_classes * acc_bytes]), dtype=f"<i{acc_bytes}")
                       for d in dumps], dtype=np.int64)
    preds = np.array([d[b.symbols["_bmp_class"]] for d in dumps], dtype=np.int64)
    used = [i for d in dumps for i in range(sseg, ram) if d[i] != PAINT]
    stack = max(used) + 1 - sseg if used else 0
    r = Result(preds=preds, logits=logits, ticks=np.array(ticks[1:], dtype=np.int64), startup_ticks=ticks[0],
               stack_bytes=stack, ram_used=sseg + stack)
    b.check(stack)
    return r


def _dumps(text: str, ram: int) -> list[list[int]]:
    """The `dump /h ram 0 RAM-1 16` outputs, in order, as byte lists."""
    out: list[list[int]] = []
    cur: list[int] = []
    for m in re.finditer(r"^0x([0-9a-f]+)((?: [0-9a-f]{2}){1,16})", text, re.M):
        if int(m[1], 16) == 0:
            cur = []
        cur += [int(v, 16) for v in m[2].split()]
        if len(cur) == ram:
            out.append(cur)
    return out


def main(argv: list[str] | None = None) -> int:
    """Build a model.json for a Padauk part, run random images in spdk and compare with the host C engine."""
    from contract.model import load
    from engine.build import build_library, load_library, run_c
    from engine.header import render_header

    ap = argparse.ArgumentParser(prog="python -m mcu.padauk.sim", description=main.__doc__)
    ap.add_argument("model", type=Path, help="an exported model.json (FC, binary/ternary/2bitsym/4bitsym)")
    ap.add_argument("--target", choices=PADAUK_NAMES, default=PADAUK_NAMES[0])
    ap.add_argument("--images", type=int, default=0, help="random test images embedded (0: as many as fit)")
    ap.add_argument("--out", type=Path, default=Path("build/padauk"))
    args = ap.parse_args(argv)
    try:
        model = load(args.model)
        from mcu.padauk.firmware import build_demo
        n = args.images or PADAUK_RANDOM_IMAGES
        px = np.random.default_rng(0).integers(0, 256, (n, model.image_size, model.image_size), dtype=np.uint8)
        b = build_demo(model, px, args.target, args.out / args.target, args.images, "--images")
        px = px[:b.n_images]
        r = run(b, model.num_classes)
    except (PadaukError, ValueError) as e:
        print(e, file=sys.stderr)
        return 1
    c = run_c(load_library(build_library(render_header(model), args.out / "host")), px, trace=False)
    same = bool((c["logits"] == r.logits).all() and (c["preds"] == r.preds).all())
    print(format_table(b.size_report(r.stack_bytes)))
    print(f"{args.target}: ticks per image {r.ticks.tolist()} (startup {r.startup_ticks}), classes {r.preds.tolist()}, "
          f"logits and classes {'equal to' if same else 'DIFFER from'} the host C engine's")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
