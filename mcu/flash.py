"""Write firmware.bin to a board through a WCH-LinkE, with rvprog (PyPI), minichlink or wlink.

The probe is looked up in /sys/bus/usb/devices (Linux): 1a86:8010 is a WCH-LinkE in RISC-V mode;
1a86:8012 is the same probe in ARM mode, which cannot program a CH32V. Every failure is a
FlashError saying what is missing and how to get it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from contract.chips import FLASH_ALIAS
from contract.errors import UserError

WCH_VENDOR = 0x1A86
LINKE_RISCV, LINKE_ARM = 0x8010, 0x8012
SYSFS = Path("/sys/bus/usb/devices")
# tool -> arguments writing the .bin at the flash alias (and verifying, where the tool can)
TOOLS = {"rvprog": ["-f", "{bin}"], "minichlink": ["-w", "{bin}", "flash", "-b"],
         "wlink": ["flash", "--address", f"{FLASH_ALIAS:#010x}", "{bin}"]}


class FlashError(UserError):
    pass


def usb_ids(sysfs: Path = SYSFS) -> list[tuple[int, int]]:
    """(vendor, product) of every USB device the kernel lists."""
    ids = []
    for dev in sorted(sysfs.glob("*")) if sysfs.is_dir() else []:
        try:
            ids.append((int((dev / "idVendor").read_text(), 16), int((dev / "idProduct").read_text(), 16)))
        except (OSError, ValueError):
            continue                            # interfaces and hubs without ids
    return ids


def find_tool() -> tuple[str, str] | None:
    """(name, path) of the first flashing tool found, the venv's bin folder included."""
    venv_bin = Path(sys.executable).parent
    for name in TOOLS:
        path = shutil.which(name) or (str(venv_bin / name) if (venv_bin / name).is_file() else None)
        if path:
            return name, path
    return None


def check_setup(sysfs: Path = SYSFS) -> tuple[str, str]:
    """The tool to use; FlashError naming everything that is missing when a probe or tool is not there."""
    problems = []
    ids = usb_ids(sysfs)
    if (WCH_VENDOR, LINKE_RISCV) not in ids:
        if (WCH_VENDOR, LINKE_ARM) in ids:
            problems.append("the WCH-LinkE is in ARM mode (USB 1a86:8012): switch it to RISC-V mode (1a86:8010) "
                            "by holding its ModeS button while plugging it in, or with WCH-LinkUtility or "
                            "`wlink mode-switch --rv`")
        else:
            problems.append(f"no WCH-LinkE found (USB 1a86:8010 in {sysfs}): plug it in and wire SWIO to PD1, "
                            "GND and 3V3; on Linux without root add a udev rule giving you access to 1a86:8010")
    tool = find_tool()
    if tool is None:
        problems.append("no flashing tool found: `pip install rvprog` (in the project's venv: ./run pip install "
                        "rvprog; it needs libusb: apt-get install libusb-1.0-0), or put minichlink (ch32fun) or "
                        "wlink (cargo install wlink) on PATH")
    if problems:
        raise FlashError("cannot flash: " + "; and ".join(problems))
    assert tool is not None
    return tool


def flash(binary: Path, sysfs: Path = SYSFS) -> str:
    """Write binary to the board; returns the tool's output."""
    if not Path(binary).is_file():
        raise FlashError(f"{binary}: no firmware image; build it with `doit firmware`")
    name, path = check_setup(sysfs)
    cmd = [path, *(a.format(bin=binary) for a in TOOLS[name])]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise FlashError(f"{' '.join(cmd)} failed (exit {res.returncode}):\n{(res.stdout + res.stderr).strip()}")
    return res.stdout + res.stderr
