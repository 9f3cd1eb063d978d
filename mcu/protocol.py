"""Host side of the serial-mode protocol (mcu/src/serial.c is the board side).

A frame, in both directions: magic 0xB5 0x4D, type u8, payload length u16 little-endian, payload,
checksum u8 chosen so that type + both length bytes + payload + checksum = 0 mod 256.

Host -> board: IMAGE (N*N uint8 pixels, row-major) and PING (empty).
Board -> host: RESULT (class u8, cycles u32, num_classes int32 logits, all little-endian), PONG
(image size, num_classes, target id: contract/chips.py's id) and ERROR (one ErrorCode byte).
The board judges a frame once it is complete: a byte missing for 50 ms -> TRUNCATED, then the
checksum, the type, the length. Bytes outside frames are skipped, on both sides.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

import numpy as np

from contract.chips import CHIPS

MAGIC = b"\xb5\x4d"
HEADER = 5                     # magic, type, length
TARGET_IDS = {c.id: c.name for c in CHIPS.values()}


class Type(IntEnum):
    IMAGE = 0x01
    PING = 0x02
    RESULT = 0x81
    PONG = 0x82
    ERROR = 0xEE


class ErrorCode(IntEnum):
    BAD_CHECKSUM = 1
    BAD_LENGTH = 2          # wrong image size, or a payload where none belongs
    UNKNOWN_TYPE = 3
    TRUNCATED = 4           # a byte missing for 50 ms inside a frame


class ProtocolError(ValueError):
    pass


def checksum(body: bytes) -> int:
    """The byte that makes sum(body) + checksum = 0 mod 256 (body: type, length, payload)."""
    return -sum(body) & 0xFF


def encode(ftype: int, payload: bytes = b"") -> bytes:
    if len(payload) > 0xFFFF:
        raise ProtocolError(f"payload of {len(payload)} bytes; a frame holds at most 65535")
    body = struct.pack("<BH", ftype, len(payload)) + bytes(payload)
    return MAGIC + body + bytes([checksum(body)])


def image_frame(pixels: np.ndarray) -> bytes:
    """IMAGE frame of an N x N uint8 image."""
    p = np.asarray(pixels)
    if p.dtype != np.uint8 or p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ProtocolError(f"an image must be uint8 N x N; got {p.dtype} {p.shape}")
    return encode(Type.IMAGE, p.tobytes())


def ping_frame() -> bytes:
    return encode(Type.PING)


@dataclass(frozen=True)
class Result:
    cls: int
    cycles: int
    logits: tuple[int, ...]


@dataclass(frozen=True)
class Pong:
    image_size: int
    num_classes: int
    target: str


@dataclass(frozen=True)
class Error:
    code: ErrorCode


@dataclass(frozen=True)
class Garbled:
    """A reply frame that arrived damaged (bad checksum, or a payload that its type cannot have)."""
    reason: str
    raw: bytes


Message = Union[Result, Pong, Error, Garbled]


def decode(ftype: int, payload: bytes, raw: bytes = b"") -> Message:
    """A board -> host frame's meaning."""
    n = len(payload)
    if ftype == Type.RESULT and n >= 5 and (n - 5) % 4 == 0:
        cls, cycles = struct.unpack_from("<BI", payload)
        return Result(cls, cycles, struct.unpack_from(f"<{(n - 5) // 4}i", payload, 5))
    if ftype == Type.PONG and n == 3:
        return Pong(payload[0], payload[1], TARGET_IDS.get(payload[2], f"unknown target {payload[2]}"))
    if ftype == Type.ERROR and n == 1 and payload[0] in ErrorCode._value2member_map_:
        return Error(ErrorCode(payload[0]))
    return Garbled(f"type 0x{ftype:02x} with a {n}-byte payload", raw)


class Parser:
    """Incremental parser of the board's byte stream: feed() bytes as they come, get messages."""

    def __init__(self, max_payload: int = 4096):
        self.buf = bytearray()
        self.max_payload = max_payload          # a longer claimed length is noise: resynchronise
        self.skipped = 0                        # bytes dropped outside frames

    def feed(self, data: bytes) -> list[Message]:
        self.buf += data
        out: list[Message] = []
        while True:
            start = self.buf.find(MAGIC)
            if start < 0:
                keep = 1 if self.buf[-1:] == MAGIC[:1] else 0      # a magic may be split across feeds
                self.skipped += len(self.buf) - keep
                del self.buf[:len(self.buf) - keep]
                return out
            self.skipped += start
            del self.buf[:start]
            if len(self.buf) < HEADER:
                return out
            ftype, length = struct.unpack_from("<BH", self.buf, 2)
            if length > self.max_payload:
                out.append(Garbled(f"claimed length {length} > {self.max_payload}", bytes(self.buf[:HEADER])))
                del self.buf[:2]                   # resynchronise after this magic
                continue
            end = HEADER + length + 1
            if len(self.buf) < end:
                return out
            raw = bytes(self.buf[:end])
            if sum(raw[2:]) & 0xFF:
                out.append(Garbled("bad checksum", raw))
                del self.buf[:2]
                continue
            del self.buf[:end]
            out.append(decode(ftype, raw[HEADER:-1], raw))

    @property
    def pending(self) -> int:
        """Bytes held back as the start of a frame not yet complete."""
        return len(self.buf)
