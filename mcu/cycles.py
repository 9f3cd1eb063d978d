"""Cycle model of the QingKe V2A (CH32V003) and V2C (CH32V002/V006) cores at 48 MHz.

Applied to an exact instruction trace, per-instruction-class costs (from the QingKe V2 core's
documented timings and flash wait states) reproduce BitNetMCU's 16 published hardware timings (its
README's tables) to about 4% rms, worst 9%; the floor of any such model is about
5%, because the same engine built by slightly different GCC versions differs that much in instruction
count. Expect our estimates to be within about 5-10% of a real board.

Per executed instruction:
  base      code fetched from SRAM: 1; from flash: 1 for a 16-bit instruction, 2 (V002: 1.5 and 4.1)
            for a 32-bit one (the flash delivers 32 bits per 2 cycles, 1 wait state; V002 has 2).
  load      max(base, 2); +1 more (V002: +2) when the data comes from flash (constant weights,
            embedded images), counted per access by the emulator.
  store     max(base, 2).
  taken     a branch or jump that changes the flow adds 2 when its target is in SRAM, 3 (V002: 2.6)
            when it is in flash.
  mul       V002 only: +0.8 over the base (the V003 has no multiplier: executing one is an error).
Each block's static part is decoded once (`block_costs`); the emulator adds the dynamic parts (taken
transfers and flash data loads).
"""
from __future__ import annotations

from dataclasses import dataclass

from contract.chips import CHIPS
from contract.chips import FLASH_ALIAS as _ALIAS

FLASH_END = -(-max(c.flash for c in CHIPS.values()) // 4096) * 4096   # flash at 0, whole 4 KiB pages ...
FLASH_ALIAS = (_ALIAS, _ALIAS + FLASH_END)          # ... and its alias

ALU, LOAD, STORE, BRANCH, JUMP, MUL, DIV, SYSTEM = range(8)


@dataclass(frozen=True)
class CoreCosts:
    flash16: float
    flash32: float
    load: float
    flash_load_extra: float
    store: float
    taken_sram: float
    taken_flash: float
    mul_extra: float | None          # None: no multiplier
    div: bool                        # hardware division (neither chip has it)


CORES = {
    "ch32v003": CoreCosts(flash16=1, flash32=2, load=2, flash_load_extra=1, store=2, taken_sram=2, taken_flash=3,
                          mul_extra=None, div=False),
    "ch32v002": CoreCosts(flash16=1.5, flash32=4.1, load=2, flash_load_extra=2, store=2, taken_sram=2,
                          taken_flash=2.6, mul_extra=0.8, div=False),
}
CORES["ch32v006"] = CORES["ch32v002"]  # the same QingKe V2C core and flash interface


def in_flash(addr: int) -> bool:
    return addr < FLASH_END or FLASH_ALIAS[0] <= addr < FLASH_ALIAS[1]


def classify(word: int, size: int) -> int:
    """Class of one RV32EC/C/M instruction (word: its bits, size: 2 or 4 bytes)."""
    if size == 4:
        op, f3, f7 = word & 0x7F, (word >> 12) & 7, word >> 25
        if op == 0x03:
            return LOAD
        if op == 0x23:
            return STORE
        if op == 0x63:
            return BRANCH
        if op in (0x6F, 0x67):
            return JUMP
        if op == 0x33 and f7 == 1:
            return MUL if f3 < 4 else DIV
        if op == 0x73:
            return SYSTEM
        return ALU
    quad, f3 = word & 3, (word >> 13) & 7
    if quad == 0:
        return LOAD if f3 == 2 else STORE if f3 == 6 else ALU            # c.lw / c.sw
    if quad == 1:
        if f3 in (1, 5):
            return JUMP                                                  # c.jal / c.j
        return BRANCH if f3 in (6, 7) else ALU                           # c.beqz / c.bnez
    if f3 == 2:
        return LOAD                                                      # c.lwsp
    if f3 == 6:
        return STORE                                                     # c.swsp
    if f3 == 4 and (word >> 2) & 0x1F == 0 and (word >> 7) & 0x1F != 0:
        return JUMP                                                      # c.jr / c.jalr
    if f3 == 4 and word == 0x9002:
        return SYSTEM                                                    # c.ebreak
    return ALU


NAMES = {MUL: "mul", DIV: "div/rem"}


@dataclass(frozen=True)
class Block:
    """Static cost of one translation block: what the emulator adds each time it runs."""
    instructions: int
    cycles: float
    ends_in_transfer: bool           # last instruction is a branch or jump
    end: int                         # address after the last instruction
    forbidden: tuple[int, int, int] | None  # (address, word, class) of a mul/div the core lacks
    upto: dict[int, tuple[int, float]]  # offset of an instruction -> (instructions, cycles) through it

    def through(self, offset: int) -> tuple[int, float]:
        """Instructions and static cycles of the block up to and including the one at offset."""
        return self.upto[offset]


def block_costs(code: bytes, addr: int, core: CoreCosts) -> Block:
    """Decode a block's instructions and sum their static costs."""
    flash = in_flash(addr)
    i, n, cycles, last, forbidden, upto = 0, 0, 0.0, ALU, None, {}
    while i < len(code):
        size = 4 if code[i] & 3 == 3 else 2
        word = int.from_bytes(code[i:i + size], "little")
        cls = classify(word, size)
        base = 1.0 if not flash else core.flash32 if size == 4 else core.flash16
        if cls == LOAD:
            base = max(base, core.load)
        elif cls == STORE:
            base = max(base, core.store)
        elif cls == MUL:
            if core.mul_extra is None and forbidden is None:
                forbidden = (addr + i, word, cls)
            base += core.mul_extra or 0.0
        elif cls == DIV and not core.div and forbidden is None:
            forbidden = (addr + i, word, cls)
        cycles += base
        n += 1
        upto[i] = (n, cycles)
        last = cls
        i += size
    return Block(n, cycles, last in (BRANCH, JUMP), addr + len(code), forbidden, upto)


def taken_cost(core: CoreCosts, target: int) -> float:
    return core.taken_flash if in_flash(target) else core.taken_sram
