"""Write a Padauk part's firmware (Intel HEX) through the Easy PDK programmer's `easypdkprog`.

`easypdkprog` is in neither Debian nor PyPI: it is built from free-pdk's easy-pdk-programmer-software
(GitHub) and found on PATH here. The write is `easypdkprog -n PFS154 write firmware.ihx` (the part name in
capitals). The PMS150C is one-time programmable: a write there is for good.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mcu.flash import FlashError

TOOL = "easypdkprog"
MISSING = (f"cannot flash: {TOOL} not found on PATH; it is in neither Debian nor PyPI: build it from "
           "https://github.com/free-pdk/easy-pdk-programmer-software (make) and put it on PATH")


def check_setup() -> str:
    """easypdkprog's path; FlashError (one line) when it is not on PATH."""
    path = shutil.which(TOOL)
    if path is None:
        raise FlashError(MISSING)
    return path


def flash(ihx: Path, target: str) -> str:
    """Write ihx to the part (target: pms150c or pfs154) in the programmer; returns the tool's output."""
    if not Path(ihx).is_file():
        raise FlashError(f"{ihx}: no firmware image; build it with `doit firmware`")
    cmd = [check_setup(), "-n", target.upper(), "write", str(ihx)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise FlashError(f"{' '.join(cmd)} failed (exit {res.returncode}):\n{(res.stdout + res.stderr).strip()}")
    return res.stdout + res.stderr
