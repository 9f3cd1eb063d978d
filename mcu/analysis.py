"""What a linked firmware holds: its call graph, a stack bound, the no-multiply scan and the size gate.

Call graph: from `objdump -d` of .text and .ramfunc. A `jal`/`j`, or an `auipc`+`jalr` pair that
objdump resolves (`# addr <f>`), to another function is an edge. A `jalr`/`jr` through a register
is an indirect call; it may reach any function whose address the code takes, which the relocations
of the object files tell exactly (any reference to a function other than a call or jump).

Stack bound: each function's frame from GCC's -fstack-usage (.su files; a "dynamic" frame is
refused), summed along the deepest path of the call graph from the reset code. The start-up code
(start.S) uses no stack; a function with no .su entry (libgcc) is counted as UNMEASURED_FRAME bytes
and listed. Recursion is refused. The fault handler is not counted: it never returns and halts.
No interrupt is enabled, so nothing else stacks on top.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from contract.chips import SRAM_BASE as RAM_ORIGIN
from contract.errors import UserError

ASM_FUNCS = frozenset({"_start", "reset", "copy_words"})        # start.S: no stack
UNMEASURED_FRAME = 64
MUL_DIV = frozenset({"mul", "mulh", "mulhsu", "mulhu", "div", "divu", "rem", "remu", "c.mul"})
HELPERS = frozenset(f"__{op}{mode}i3" for op in ("mul", "div", "udiv", "mod", "umod") for mode in "sd")
# relocation types that are calls, jumps or linker bookkeeping, not an address taken
_CONTROL = {16, 17, 18, 19, 43, 44, 45, 51}   # BRANCH JAL CALL CALL_PLT ALIGN RVC_BRANCH RVC_JUMP RELAX

_HEAD = re.compile(r"^([0-9a-f]+) <(.+)>:$")
_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_TARGET = re.compile(r"<([^>+]+)(\+0x[0-9a-f]+)?>$")


class FirmwareError(UserError):
    """A firmware that cannot be built, does not fit, or breaks a target rule."""


@dataclass
class Func:
    name: str
    addr: int
    insns: list[tuple[int, str, str]] = field(default_factory=list)   # (address, mnemonic, operands)
    calls: set[str] = field(default_factory=set)
    indirect: bool = False


@dataclass
class Program:
    funcs: dict[str, Func]
    frames: dict[str, int]          # function -> stack frame bytes
    taken: set[str]                 # functions whose address is taken (indirect call targets)
    unmeasured: list[str]           # functions counted as UNMEASURED_FRAME

    def callees(self, name: str) -> set[str]:
        f = self.funcs[name]
        out = set(f.calls)
        if f.indirect:
            out |= self.taken
        return {c for c in out if c != name and c in self.funcs}


def parse_disassembly(text: str) -> dict[str, Func]:
    funcs: dict[str, Func] = {}
    cur: Func | None = None
    for line in text.splitlines():
        m = _HEAD.match(line)
        if m:
            cur = funcs.setdefault(m.group(2), Func(m.group(2), int(m.group(1), 16)))
            continue
        m = _INSN.match(line)
        if not m or cur is None:
            continue
        addr, op, args = int(m.group(1), 16), m.group(2), m.group(3).strip()
        cur.insns.append((addr, op, args))
        if op not in ("jal", "j", "jalr", "jr"):
            continue
        t = _TARGET.search(args)
        if t:
            if t.group(1) != cur.name:                 # a jump to itself is a loop, not a call
                cur.calls.add(t.group(1))
        elif op in ("jalr", "jr"):
            cur.indirect = True
    return funcs


def _base(name: str) -> str:
    """GCC clones: the ELF has f.constprop.0 where the .su file says f.constprop."""
    return re.sub(r"\.\d+$", "", name)


def read_frames(build_dir: Path) -> dict[str, int]:
    frames: dict[str, int] = {}
    for su in sorted(Path(build_dir).glob("*.su")):
        for line in su.read_text().splitlines():
            where, size, kind = line.split("\t")
            name = where.rsplit(":", 1)[1]
            if "dynamic" in kind and "bounded" not in kind:
                raise FirmwareError(f"stack bound: {where} has a dynamic stack frame ({kind}); "
                                    "no bound can be given")
            frames[name] = max(frames.get(name, 0), int(size))
    return frames


def address_taken(objs: Sequence[Path]) -> set[str]:
    """Functions referenced by anything but a call or jump, from the objects' relocations."""
    taken: set[str] = set()
    for obj in objs:
        with open(obj, "rb") as f:
            elf = ELFFile(f)
            symtab = elf.get_section_by_name(".symtab")
            for sec in elf.iter_sections():
                if not isinstance(sec, RelocationSection) or ".debug" in sec.name:
                    continue
                for rel in sec.iter_relocations():
                    if rel["r_info_type"] in _CONTROL:
                        continue
                    sym = symtab.get_symbol(rel["r_info_sym"])
                    kind = sym["st_info"]["type"]
                    if kind == "STT_FUNC" or (sym["st_shndx"] == "SHN_UNDEF" and sym.name):
                        taken.add(sym.name)           # a function, or a name defined elsewhere
                    elif kind == "STT_SECTION" and rel["r_addend"] == 0:
                        # -ffunction-sections: a static function is the start of its own section
                        name = elf.get_section(sym["st_shndx"]).name
                        if name.startswith((".text.", ".ramfunc.")):
                            taken.add(name.split(".", 2)[2])
    return taken


def analyse(disassembly: str, objs: Sequence[Path], build_dir: Path) -> Program:
    funcs = parse_disassembly(disassembly)
    su = read_frames(build_dir)
    frames, unmeasured = {}, []
    for name in funcs:
        if name in ASM_FUNCS:
            frames[name] = 0
        elif name in su or _base(name) in su:
            frames[name] = su.get(name, su.get(_base(name), 0))
        else:
            frames[name] = UNMEASURED_FRAME
            unmeasured.append(name)
    return Program(funcs, frames, address_taken(objs), sorted(unmeasured))


def stack_bound(prog: Program, root: str) -> int:
    """Largest sum of frames along a call path from root (FirmwareError on recursion)."""
    memo: dict[str, int] = {}

    def depth(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            cycle = " -> ".join(path[path.index(name):] + (name,))
            raise FirmwareError(f"stack bound: recursion {cycle}; no bound can be given")
        if name not in memo:
            below = [depth(c, path + (name,)) for c in sorted(prog.callees(name))]
            memo[name] = prog.frames[name] + max(below, default=0)
        return memo[name]

    return depth(root, ())


def no_multiply_scan(prog: Program, roots: Sequence[str], where: str) -> list[str]:
    """Check roots and everything they call for mul/div/rem and the multiply/divide helpers.

    Returns the functions scanned; raises FirmwareError naming the function and instruction.
    """
    seen: set[str] = set()
    todo = [r for r in roots if r in prog.funcs]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in HELPERS:
            raise FirmwareError(f"{where}: no-multiply scan: the inference code reaches {name}")
        for addr, op, args in prog.funcs[name].insns:
            t = _TARGET.search(args)
            if op in MUL_DIV or (t and t.group(1) in HELPERS):
                raise FirmwareError(f"{where}: no-multiply scan: {name} at 0x{addr:x}: `{op} {args}`; "
                                    "the inference code must use add, subtract and shift only on this target")
        todo.extend(prog.callees(name))
    return sorted(seen)


@dataclass
class SizeReport:
    """Flash and RAM use of a linked image, per region and per section."""
    flash_used: int
    ram_static: int                 # .ramfunc + .data + .bss, with alignment
    stack: int
    flash_limit: int
    ram_limit: int
    sections: list[dict[str, Any]]  # name, flash bytes, ram bytes
    largest: dict[str, list[tuple[str, int]]]

    @property
    def ram_used(self) -> int:
        return self.ram_static + self.stack

    @classmethod
    def of(cls, elf_path: Path, flash_limit: int, ram_limit: int, stack: int) -> "SizeReport":
        with open(elf_path, "rb") as f:
            elf = ELFFile(f)
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            flash_end, ram_end, rows = 0, RAM_ORIGIN, []
            for sec in elf.iter_sections():
                if not sec["sh_flags"] & 2 or sec["sh_size"] == 0:       # SHF_ALLOC
                    continue
                size, vma = sec["sh_size"], sec["sh_addr"]
                in_ram = vma >= RAM_ORIGIN
                loaded = sec["sh_type"] != "SHT_NOBITS"
                if loaded:
                    seg = next(s for s in loads if s.section_in_segment(sec))
                    flash_end = max(flash_end, seg["p_paddr"] + vma - seg["p_vaddr"] + size)
                if in_ram:
                    ram_end = max(ram_end, vma + size)
                rows.append(dict(section=sec.name, flash=size if loaded else 0, ram=size if in_ram else 0))
            largest = {"flash": [], "ram": []}
            for sym in elf.get_section_by_name(".symtab").iter_symbols():
                if sym["st_size"] and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT"):
                    largest["ram" if sym["st_value"] >= RAM_ORIGIN else "flash"].append((sym.name, sym["st_size"]))
        for k in largest:
            largest[k] = sorted(largest[k], key=lambda x: -x[1])[:5]
        return cls(flash_end, ram_end - RAM_ORIGIN, stack, flash_limit, ram_limit, rows, largest)

    def table(self) -> str:
        lines = [f"{'region':<8} {'used':>6} {'limit':>6} {'free':>6}"]
        for region, used, limit in (("flash", self.flash_used, self.flash_limit), ("ram", self.ram_used, self.ram_limit)):
            lines.append(f"{region:<8} {used:>6} {limit:>6} {limit - used:>6}" + ("  OVER" if used > limit else ""))
        lines += ["", f"{'section':<12} {'flash':>6} {'ram':>6}"]
        lines += [f"{r['section']:<12} {r['flash']:>6} {r['ram']:>6}" for r in self.sections]
        lines.append(f"{'stack bound':<12} {0:>6} {self.stack:>6}")
        for region in ("flash", "ram"):
            lines.append(f"largest in {region}: " + ", ".join(f"{n} {s}" for n, s in self.largest[region]))
        return "\n".join(lines)

    def check(self, what: str, hints: Sequence[str]) -> None:
        over = [r for r, used, lim in (("flash", self.flash_used, self.flash_limit), ("RAM", self.ram_used,
                                                                                   self.ram_limit)) if used > lim]
        if over:
            raise FirmwareError(f"{what}: the firmware does not fit ({' and '.join(over)}):\n{self.table()}\n"
                                + "\n".join(hints))
