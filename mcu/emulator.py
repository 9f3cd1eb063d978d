"""Run CH32V00x firmware in-process under unicorn, counting instructions and estimating cycles.

The ELF (linked at 0, mcu/src/link.ld) is loaded from its PT_LOAD segments into flash at 0 and at its
alias 0x08000000; SRAM is 2 KiB (V003) or 4 KiB (V002) at 0x20000000, and any access outside a modelled
region stops the run with the address and PC. Peripherals are modelled as far as our firmware uses them:
register writes are kept and read back; RCC reports its oscillator and PLL ready and the clock switch done;
USART1 is always ready to send, captures every sent byte (`tx`) and delivers bytes given to `feed`;
SysTick's counter reads as the estimated cycle count (mcu/cycles.py), and every read of it is recorded as
a mark (instructions, cycles), so the two reads around an inference give its exact instruction count and
estimated cycles (with profile=True also a copy of the per-function profile, `mark_profiles`). GPIO
output registers are tracked per port (`gpio`).

Two firmware functions are recognised by symbol: reaching `fw_halt` ends a run ("halt"); reaching
`fw_getc` with no received byte pending pauses it ("idle") until the host feeds more, or, when the host
asks to expire timeouts and the call has one (a0 != 0), advances the clock by a0 so the firmware times
out as it would on a board. Instructions are counted per translation block (exact); a multiply or divide
the core lacks stops the run, because unicorn itself would execute it.
"""
from __future__ import annotations

from collections import defaultdict, deque
from pathlib import Path

from elftools.elf.elffile import ELFFile
from unicorn import (
    UC_ARCH_RISCV,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_MEM_INVALID,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MODE_RISCV32,
    Uc,
    UcError,
)
from unicorn.riscv_const import UC_RISCV_REG_A0, UC_RISCV_REG_PC

from contract.chips import CHIPS, RISCV_NAMES, SRAM_BASE
from mcu import cycles as cm

FLASH_SIZE = cm.FLASH_END               # mapped for every chip; each one's own size is checked
PERIPH = (0x40010000, 0x13000)          # GPIOA .. FLASH interface
CORE_PERIPH = (0xE000E000, 0x2000)      # PFIC, SysTick
RCC_CTLR, RCC_CFGR0 = 0x40021000, 0x40021004
USART_STATR, USART_DATAR = 0x40013800, 0x40013804
STK_CNT = 0xE000F008
GPIO = {0x40010800: "A", 0x40011000: "C", 0x40011400: "D"}
NEVER = 0xFFFFFFF0                      # emu_start's `until`: runs end by hooks or the count


class EmulatorError(RuntimeError):
    """The firmware did something the chip would not survive (named with its PC)."""


class Emulator:
    def __init__(self, elf: str | Path, target: str, profile: bool = False):
        if target not in RISCV_NAMES:
            raise ValueError(f"target {target!r}: the RISC-V emulator runs {', '.join(RISCV_NAMES)}"
                             + (" (a Padauk part: use mcu.padauk.sim)" if target in CHIPS else ""))
        self.target, self.core, self.ram = target, cm.CORES[target], CHIPS[target].ram
        self.tx = bytearray()
        self.rx: deque[int] = deque()
        self.marks: list[tuple[int, float]] = []
        self.instructions, self.cycles = 0, 0.0
        self.flash_loads = 0
        self.instructions_in = {"flash": 0, "sram": 0}
        self.gpio = {p: 0 for p in GPIO.values()}
        self.profile: dict[str, list[float]] | None = defaultdict(lambda: [0, 0.0]) if profile else None
        self.mark_profiles: list[dict[str, tuple[int, float]]] = []   # profile: a copy at each mark
        self._regs: dict[int, int] = {}
        self._blocks: dict[tuple[int, int], cm.Block] = {}
        self._prev: cm.Block | None = None
        self._cur: tuple[int, cm.Block] | None = None
        self._stop: str | None = None
        self._error: str | None = None
        self._expire = False

        with open(elf, "rb") as f:
            e = ELFFile(f)
            image = bytearray(FLASH_SIZE)
            for seg in e.iter_segments():
                if seg["p_type"] != "PT_LOAD" or seg["p_filesz"] == 0:
                    continue
                lma = seg["p_paddr"]
                if lma + seg["p_filesz"] > CHIPS[target].flash:
                    raise EmulatorError(f"{elf}: segment at {lma:#x} ({seg['p_filesz']} B) is outside the "
                                        f"{CHIPS[target].flash} B flash of the {target}")
                image[lma:lma + seg["p_filesz"]] = seg.data()
            self.pc = e.header["e_entry"]
            symtab = e.get_section_by_name(".symtab")
            syms = {s.name: s["st_value"] for s in symtab.iter_symbols()} if symtab else {}
            self._funcs = sorted((s["st_value"], s["st_value"] + s["st_size"], s.name)
                                 for s in (symtab.iter_symbols() if symtab else ())
                                 if s["st_info"]["type"] == "STT_FUNC" and s["st_size"])
        if "fw_halt" not in syms:
            raise EmulatorError(f"{elf}: no symbol fw_halt (mcu/src/system.c defines it): not our firmware?")

        uc = self.uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV32)
        for base in (0, cm.FLASH_ALIAS[0]):
            uc.mem_map(base, FLASH_SIZE)
            uc.mem_write(base, bytes(image))
        uc.mem_map(SRAM_BASE, max(self.ram, 0x1000))
        for base, size in (PERIPH, CORE_PERIPH):  # user data: the region's base address
            uc.mmio_map(base, size, self._read, base, self._write, base)
        uc.hook_add(UC_HOOK_BLOCK, self._on_block)
        for lo, hi in ((0, FLASH_SIZE - 1), (cm.FLASH_ALIAS[0], cm.FLASH_ALIAS[1] - 1)):
            uc.hook_add(UC_HOOK_MEM_READ, self._on_flash_read, begin=lo, end=hi)
            uc.hook_add(UC_HOOK_MEM_WRITE, self._on_flash_write, begin=lo, end=hi)
        if self.ram < 0x1000:  # the 4 KiB page holds more than the chip has
            uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_beyond_ram,
                        begin=SRAM_BASE + self.ram, end=SRAM_BASE + 0xFFF)
        uc.hook_add(UC_HOOK_MEM_INVALID, self._on_invalid)
        uc.hook_add(UC_HOOK_CODE, self._on_halt, begin=syms["fw_halt"], end=syms["fw_halt"])
        if "fw_getc" in syms:  # demo firmware reads nothing: the linker dropped it
            uc.hook_add(UC_HOOK_CODE, self._on_getc, begin=syms["fw_getc"], end=syms["fw_getc"])

    # ---- host side --------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes for the firmware's USART1 receiver, delivered one per DATAR read."""
        self.rx.extend(data)

    def run(self, max_instructions: int = 50_000_000, expire_timeouts: bool = False) -> str:
        """Run until fw_halt ("halt"), fw_getc with nothing to read ("idle") or the limit ("limit")."""
        self._stop, self._error, self._expire = None, None, expire_timeouts
        start = self.instructions
        try:
            self.uc.emu_start(self.pc, NEVER, count=max_instructions)
        except UcError as e:
            pc = self.uc.reg_read(UC_RISCV_REG_PC)
            if self._error is None:
                word = int.from_bytes(self.uc.mem_read(pc, 4), "little") if self._mapped(pc) else None
                if word is not None and (word == 0x00100073 or word & 0xFFFF == 0x9002):
                    self.pc = pc
                    return "ebreak"
                self._error = f"{e} at pc {pc:#010x} ({self._where(pc)})"
        self.pc = self.uc.reg_read(UC_RISCV_REG_PC)
        if self._error is not None:
            raise EmulatorError(f"{self.target} firmware: {self._error}")
        if self._stop is None:
            if self.instructions - start < max_instructions:
                raise EmulatorError(f"{self.target} firmware stopped at pc {self.pc:#010x} ({self._where(self.pc)}) "
                                    "for no known reason")
            return "limit"
        return self._stop

    # ---- hooks ------------------------------------------------------------------------------------------
    def _on_block(self, uc, addr, size, _):
        b = self._blocks.get((addr, size))
        if b is None:
            b = self._blocks[(addr, size)] = cm.block_costs(bytes(uc.mem_read(addr, size)), addr, self.core)
        if b.forbidden is not None:
            at, word, cls = b.forbidden
            self._fail(f"{cm.NAMES[cls]} instruction {word:#010x} at {at:#010x} ({self._where(at)}): "
                       f"the {self.target} has no {'multiplier' if cls == cm.MUL else 'divider'}")
            return
        extra = 0.0
        if self._prev is not None and self._prev.ends_in_transfer and addr != self._prev.end:
            extra = cm.taken_cost(self.core, addr)
        self.instructions += b.instructions
        self.cycles += b.cycles + extra
        self.instructions_in["flash" if cm.in_flash(addr) else "sram"] += b.instructions
        if self.profile is not None:
            p = self.profile[self._where(addr)]
            p[0] += b.instructions
            p[1] += b.cycles + extra
        self._prev, self._cur = b, (addr, b)

    def _uncharge_current(self) -> None:
        """Stopping at a block's first instruction: it did not run, so take back its static cost."""
        addr, b = self._cur
        self.instructions -= b.instructions
        self.cycles -= b.cycles
        self.instructions_in["flash" if cm.in_flash(addr) else "sram"] -= b.instructions
        if self.profile is not None:
            self.profile[self._where(addr)][0] -= b.instructions
            self.profile[self._where(addr)][1] -= b.cycles
        self._prev = None  # the transfer into this block is already counted

    def _on_halt(self, uc, addr, size, _):
        self._uncharge_current()
        self._stop = "halt"
        uc.emu_stop()

    def _on_getc(self, uc, addr, size, _):
        if self.rx:
            return
        timeout = uc.reg_read(UC_RISCV_REG_A0)
        if self._expire and timeout:
            self.cycles += timeout  # the firmware waits that long, then gives up
            return
        self._uncharge_current()
        self._stop = "idle"
        uc.emu_stop()

    def _on_flash_read(self, uc, access, addr, size, value, _):
        self.flash_loads += 1
        self.cycles += self.core.flash_load_extra

    def _on_flash_write(self, uc, access, addr, size, value, _):
        self._fail(f"store of {value:#x} to flash address {addr:#010x}")

    def _on_beyond_ram(self, uc, access, addr, size, value, _):
        self._fail(f"access to {addr:#010x}, beyond the {self.ram} B of SRAM (stack overflow?)")

    def _on_invalid(self, uc, access, addr, size, value, _):
        self._fail(f"access to unmapped address {addr:#010x}")
        return False

    def _fail(self, msg: str) -> None:
        pc = self.uc.reg_read(UC_RISCV_REG_PC)
        self._error = f"{msg} (pc {pc:#010x}, {self._where(pc)})"
        self.uc.emu_stop()

    # ---- peripherals ------------------------------------------------------------------------------------
    def _read(self, uc, offset, size, base):
        return self._reg_read(base + offset)

    def _write(self, uc, offset, size, value, base):
        self._reg_write(base + offset, value)

    def _reg_read(self, addr: int) -> int:
        v = self._regs.get(addr, 0)
        if addr == STK_CNT:
            n, c = self._now()
            self.marks.append((n, c))
            if self.profile is not None:   # per-function figures between two marks (the reading block aside)
                self.mark_profiles.append({k: (v[0], v[1]) for k, v in self.profile.items()})
            return int(c) & 0xFFFFFFFF
        if addr == USART_STATR:
            return 0xC0 | (0x20 if self.rx else 0)
        if addr == USART_DATAR:
            return self.rx.popleft() if self.rx else 0
        if addr == RCC_CTLR:
            return v | (0x2 if v & 0x1 else 0) | (0x2000000 if v & 0x1000000 else 0)
        if addr == RCC_CFGR0:
            return (v & ~0xC) | ((v & 0x3) << 2)
        return v

    def _reg_write(self, addr: int, value: int) -> None:
        if addr == USART_DATAR:
            self.tx.append(value & 0xFF)
            return
        self._regs[addr] = value
        port = GPIO.get(addr & ~0xFF)
        if port is not None:
            reg = addr & 0xFF
            if reg == 0x0C:
                self.gpio[port] = value & 0xFFFF
            elif reg == 0x10:
                self.gpio[port] = (self.gpio[port] | (value & 0xFFFF)) & ~(value >> 16)
            elif reg == 0x14:
                self.gpio[port] &= ~value & 0xFFFF

    # ---- helpers ----------------------------------------------------------------------------------------
    def _now(self) -> tuple[int, float]:
        """Exact instructions and cycles through the executing instruction: the counters hold the whole
        current block (charged on entry), so take back the part after the PC."""
        addr, b = self._cur
        n, c = b.through(self.uc.reg_read(UC_RISCV_REG_PC) - addr)
        return self.instructions - b.instructions + n, self.cycles - b.cycles + c

    def _mapped(self, addr: int) -> bool:
        return any(lo <= addr < hi + 1 for lo, hi, _ in self.uc.mem_regions())

    def _where(self, pc: int) -> str:
        for lo, hi, name in self._funcs:
            if lo <= pc < hi:
                return name
        return "?"
