"""CH32V00x firmware: sources, build, emulator harness, flashing."""
