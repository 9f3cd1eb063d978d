"""CH32V003/V002 firmware: sources, build, emulator harness, flashing."""
