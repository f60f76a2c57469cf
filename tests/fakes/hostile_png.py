"""Hostile PNG files built byte by byte: huge declared sizes, many animation frames, text bombs.

Every file is a valid PNG that Pillow would decode (at great cost: that is the point); none is
built by encoding pixels, so a 13000x13000 RGBA picture costs milliseconds to make. The image
data is black (all-zero scanlines with filter 0); its zlib stream is assembled from one deflate
block repeated after full flushes (each such block is compressed from a reset state, so the
copies are identical), and its Adler-32 is computed in closed form (for n zero bytes, A = 1 and
B = n mod 65521). This module knows nothing of the project's reader.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BLOCK = 1 << 20
_CHANNELS = {0: 1, 2: 3, 6: 4}  # colour type -> samples per pixel (8-bit)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def header(width: int, height: int, colour_type: int = 2) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))


def black_zlib(width: int, height: int, colour_type: int = 2) -> bytes:
    """The zlib stream of `height` all-zero scanlines (filter byte + samples)."""
    total = height * (1 + width * _CHANNELS[colour_type])
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes(_BLOCK)) + deflate.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(total, _BLOCK)
    tail = deflate.compress(bytes(rest)) + deflate.flush()
    adler = ((total % 65521) << 16) | 1
    return b"\x78\xda" + block * full + tail + struct.pack(">I", adler)


def black_png(width: int, height: int, colour_type: int = 2, extra: bytes = b"") -> bytes:
    """A still black picture; `extra` (chunks) goes between the header and the image data."""
    data = black_zlib(width, height, colour_type)
    return SIGNATURE + header(width, height, colour_type) + extra + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def header_only_png(width: int, height: int) -> bytes:
    """A header declaring any size, with a token image-data chunk (what a forged file looks like)."""
    return SIGNATURE + header(width, height) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def animated_png(width: int, height: int, frames: int) -> bytes:
    """An APNG of `frames` black frames (acTL, then fcTL + IDAT, then fcTL + fdAT per frame)."""
    data = black_zlib(width, height)
    parts = [SIGNATURE, header(width, height), chunk(b"acTL", struct.pack(">II", frames, 0))]
    sequence = 0

    def control() -> bytes:
        nonlocal sequence
        body = struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, 1, 10, 0, 0)
        sequence += 1
        return chunk(b"fcTL", body)

    parts += [control(), chunk(b"IDAT", data)]
    for _ in range(frames - 1):
        parts.append(control())
        parts.append(chunk(b"fdAT", struct.pack(">I", sequence) + data))
        sequence += 1
    parts.append(chunk(b"IEND", b""))
    return b"".join(parts)


def itxt(key: str, text: bytes, compressed: bool = True) -> bytes:
    """An iTXt chunk; `text` is stored as given (zlib-compressed when `compressed`)."""
    body = text if not compressed else zlib.compress(text, 9)
    return chunk(b"iTXt", key.encode("latin-1") + b"\0" + bytes([int(compressed), 0]) + b"\0\0" + body)
