"""emulate: the firmware in the unicorn emulator, held to the C engine; cycles per inference."""
from __future__ import annotations

from pipeline.stage import Stage

STAGE = Stage(
    name="emulate",
    doc="Run the firmware in the unicorn CH32V00x emulator: predictions equal the C engine's; cycles per inference",
    module="pipeline.emulate",
    inputs=("data", "export", "library", "firmware"),
)
