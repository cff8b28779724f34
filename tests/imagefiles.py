"""Generators of good and bad image files for the CLI and I/O tests (all tiny, written to tmp dirs)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient_rgb(h: int = 24, w: int = 32) -> np.ndarray:
    """(h, w, 3) uint8 RGB image whose every pixel is distinct enough to tell orientation apart."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], axis=2).astype(np.uint8)


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_exif_rotated_jpeg(path: Path, rgb: np.ndarray, orientation: int = 6) -> Path:
    """JPEG whose stored pixels are ``rgb`` and whose EXIF says: display rotated (6 = 90° clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, format="JPEG", quality=100, exif=exif.tobytes())
    return path


def write_truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(gradient_rgb(64, 64)).save(buf, format="JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def write_corrupt_png(path: Path) -> Path:
    """A PNG with a valid header whose image data chunk is garbage (CRC of the IDAT is wrong)."""
    data = bytearray(png_bytes(Image.fromarray(gradient_rgb())))
    idat = data.index(b"IDAT")
    data[idat + 4: idat + 24] = b"\x00" * 20
    path.write_bytes(bytes(data))
    return path


def write_bomb_png(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A few-byte PNG whose header claims ``width`` x ``height`` grey pixels (a decompression bomb)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def write_text_as_jpeg(path: Path) -> Path:
    path.write_text("this is a text file, not a picture\n")
    return path
