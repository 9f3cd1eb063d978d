"""emulate: the firmware in the unicorn emulator (RISC-V) or spdk (Padauk), held to the C engine; cycles per inference."""
from __future__ import annotations

from pipeline.stage import Stage

STAGE = Stage(
    name="emulate",
    doc="Run the firmware in the unicorn CH32V00x emulator or spdk (Padauk): predictions equal the C engine's; cycles",
    module="pipeline.emulate",
    inputs=("data", "export", "library", "firmware"),
)
