"""Print what the board writes on USART1 (115200 8N1), read through a USB-serial adapter."""
from __future__ import annotations

import glob
import sys
from typing import Callable, TextIO

from contract.errors import UserError

BAUD = 115200
PORT_PATTERNS = ("/dev/ttyUSB*", "/dev/ttyACM*")


class PortError(UserError):
    pass


def find_port(configured: str | None, patterns: tuple[str, ...] = PORT_PATTERNS) -> str:
    """The configured port, or the first USB-serial adapter the system lists."""
    if configured:
        return configured
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise PortError(f"no serial port found (looked for {' and '.join(patterns)}): connect a USB-serial adapter "
                    "(its RX to the board's PD5 = USART1 TX, its TX to PD6, GND to GND) or name the port with "
                    "port=/dev/ttyUSB0 (doit monitor; or the config key mcu.port) or --port /dev/ttyUSB0 "
                    "(python -m pipeline.send)")


def open_port(port: str, timeout: float = 0.2):
    import serial  # pyserial; only needed when a board is attached

    try:
        return serial.Serial(port, BAUD, timeout=timeout)
    except (serial.SerialException, OSError) as e:
        raise PortError(f"cannot open serial port {port}: {e}") from None


def monitor(port: str, out: TextIO = sys.stdout, stop: Callable[[], bool] = lambda: False) -> None:
    """Print the board's text lines until Ctrl-C (or until stop() is true)."""
    with open_port(port) as ser:
        print(f"[monitor] {port} at {BAUD} 8N1; Ctrl-C ends", file=out, flush=True)
        try:
            while not stop():
                line = ser.readline()
                if line:
                    print(line.decode("ascii", "replace").rstrip("\r\n"), file=out, flush=True)
        except KeyboardInterrupt:
            pass
