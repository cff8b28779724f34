"""Finding, reading and writing image files.

``read_image`` is the one place where a file becomes the BGR ``uint8`` array that every model's
preprocessing expects (the official MXNet code reads with ``cv2.imread``, i.e. BGR). Decoding uses
Pillow because it applies EXIF orientation, reports truncated files and exposes the image size before
decoding (to refuse decompression bombs). Writers go through :mod:`dcnviz.io.atomic` (a temporary file
in the destination folder, then a rename), so an interrupted or failed write never leaves a
half-written file behind; ``write_png_palette_atomic`` is the one writer of label-map PNGs.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dcnviz.errors import DatasetError, ImageError
from dcnviz.io.atomic import write_bytes_atomic

# Suffixes looked for in folders and globs (lower case).
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Largest image accepted, in pixels (width * height after decoding the header). 100 MP covers
# medium-format photos; a larger "image" is almost surely a decompression bomb and would need
# gigabytes once decoded and resized.
MAX_PIXELS = 100_000_000
# Colour that transparent pixels are composited onto (RGB): the ImageNet/MSRA mean pixel, so
# transparency becomes ~0 after the models' mean subtraction (mmcv's Pillow backend does the same).
ALPHA_BACKGROUND = (123, 116, 103)
_GLOB_CHARS = frozenset("*?[")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a (H, W, 3) BGR ``uint8`` array, upright as a viewer would show it.

    EXIF orientation is applied, so H and W are those of the displayed image. Grey and 1-bit images
    are replicated to three channels; palette images are expanded; alpha is composited onto
    ``ALPHA_BACKGROUND``; 16-bit images are scaled to 8 bits (v / 257, rounded); CMYK, YCbCr and
    LAB are converted to RGB. Multi-frame files give their first frame.

    Raises :class:`~dcnviz.errors.ImageError` (a one-line message naming the file) when the file is
    missing, unreadable, empty, not an image, larger than ``MAX_PIXELS``, truncated or corrupt.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not a file") from None
    except OSError as e:
        raise ImageError(path, e.strerror or str(e)) from None
    if not data:
        raise ImageError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # MAX_PIXELS below is the limit; Pillow's own warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                _check_size(path, im.size)
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb_uint8(path, im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not an image file (unknown format)") from None
    except Image.DecompressionBombError:
        raise ImageError(path, f"image is over the limit of {MAX_PIXELS // 10**6} MP "
                               "(decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated data as OSError ("image file is truncated ...") and broken
        # headers or chunks as SyntaxError/ValueError/EOFError.
        raise ImageError(path, f"corrupt or truncated image ({_first_line(e)})") from None
    return np.ascontiguousarray(rgb[..., ::-1])


def _check_size(path, size: tuple[int, int]) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(path, f"image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(path, f"image is {w}x{h} = {w * h / 1e6:.0f} MP, over the limit of "
                               f"{MAX_PIXELS // 10**6} MP (decompression bomb?)")


def _to_rgb_uint8(path, im: Image.Image) -> np.ndarray:
    """(H, W, 3) RGB uint8 from any Pillow mode (see ``read_image`` for the rules)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im)
        if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
            raise ImageError(path, f"unsupported {im.mode} image with values outside 0..65535")
        grey = np.round(a.astype(np.float32) / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        raise ImageError(path, "floating-point images are not supported; convert to 8 or 16 bit")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, ALPHA_BACKGROUND)
        background.paste(im, mask=im.getchannel("A"))
        im = background
    if im.mode != "RGB":
        raise ImageError(path, f"unsupported image mode {im.mode}")
    return np.asarray(im)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def find_images(sources: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Expand image files, folders and glob patterns into a list of unique image paths, sorted
    naturally (``img2`` before ``img10``).

    A folder contributes the files in it whose suffix is in ``IMAGE_SUFFIXES`` (any case), and with
    ``recursive`` those of its subfolders; hidden files and folders (".name") are skipped. A glob is
    expanded with ``**`` support. A file named explicitly must have an image suffix. Paths keep the
    form the user gave (``~`` expanded); duplicates (the same file reached twice) are dropped.

    Raises :class:`~dcnviz.errors.DatasetError` for a missing path, a folder without images, a
    glob matching no images, or an explicit file with another suffix.
    """
    found: dict[str, Path] = {}
    for source in sources:
        for path in _expand(str(source), recursive):
            found.setdefault(os.path.realpath(path), path)
    if not found:
        raise DatasetError("no image sources given")
    return sorted(found.values(), key=_natural_key)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _expand(source: str, recursive: bool) -> list[Path]:
    text = os.path.expanduser(source)
    path = Path(text)
    if path.is_dir():
        images = _folder_images(path, recursive)
        if not images:
            hint = ""
            if not recursive and any(p.is_dir() for p in _listdir(path)):
                hint = "; it has subfolders, use --recursive to search them"
            raise DatasetError(f"folder '{source}' contains no images "
                               f"(looked for {', '.join(IMAGE_SUFFIXES)}){hint}")
        return images
    if path.exists():
        if not _is_image_name(path):
            raise DatasetError(f"'{source}' is not a supported image type "
                               f"(supported: {', '.join(IMAGE_SUFFIXES)})")
        return [path]
    if _GLOB_CHARS & set(text):
        matches = [Path(m) for m in glob.glob(text, recursive=True)]
        images = [m for m in matches if m.is_file() and _is_image_name(m)]
        if not images:
            what = f"{len(matches)} paths but no images" if matches else "nothing"
            raise DatasetError(f"pattern '{source}' matched {what}")
        return images
    raise DatasetError(f"no such file or folder: '{source}'")


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return [p for p in _listdir(folder) if p.is_file() and _is_image_name(p)]
    images = []
    # os.walk does not follow symlinked folders, so link cycles cannot make it loop.
    for root, dirs, files in os.walk(folder, onerror=_raise_walk_error):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        images += [Path(root, f) for f in files if _is_image_name(Path(f))]
    return [p for p in images if p.is_file()]


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise DatasetError(f"cannot list folder '{folder}': {e.strerror or e}") from None


def _raise_walk_error(e: OSError) -> None:
    raise DatasetError(f"cannot list folder '{e.filename}': {e.strerror or e}")


def _is_image_name(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def write_image_atomic(path: str | os.PathLike, image_bgr: np.ndarray) -> None:
    """Encode a BGR ``uint8`` image by the suffix of ``path`` (``.jpg``: quality 95) and write it
    atomically (see :func:`dcnviz.io.atomic.write_atomic`)."""
    suffix = Path(path).suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, image_bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {suffix}")
    write_bytes_atomic(path, buf.tobytes())


def write_json_atomic(path: str | os.PathLike, obj, expand: int = 2) -> None:
    """Write ``obj`` as JSON, atomically. The outer ``expand`` levels of lists and objects get one
    item per line, deeper ones stay on one line (a box per line, not a number per line). NaN and
    infinity are refused, so the file is always valid JSON."""
    write_bytes_atomic(path, (_dumps(obj, expand) + "\n").encode("utf-8"))


def _dumps(obj, expand: int, indent: str = "") -> str:
    if expand <= 0 or not isinstance(obj, (dict, list)) or not obj:
        return json.dumps(obj, allow_nan=False)
    inner = indent + "  "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, expand - 1, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    items = [inner + _dumps(v, expand - 1, inner) for v in obj]
    return "[\n" + ",\n".join(items) + f"\n{indent}]"


def write_png_palette_atomic(path: str | os.PathLike, labels: np.ndarray,
                             palette: Sequence[tuple[int, int, int]]) -> None:
    """Write a (H, W) ``uint8`` label map as a palette ("P" mode) PNG: pixel values are the class
    indices, ``palette[i]`` (RGB) is the colour shown for class i; indices without a colour (e.g.
    255 = ignore) show black."""
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"labels must be a (H, W) uint8 array, got {labels.dtype} {labels.shape}")
    if len(palette) > 256:
        raise ValueError(f"a PNG palette holds 256 colours, got {len(palette)}")
    flat = [c for rgb in palette for c in rgb]
    im = Image.fromarray(labels)  # mode "L"; putpalette turns it into "P" with the same indices
    im.putpalette(flat + [0] * (768 - len(flat)))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    write_bytes_atomic(path, buf.getvalue())
