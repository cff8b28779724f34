"""Fuzzing the file inputs: the ``.params`` reader and the safetensors loader on mutated real files, and
the CLI (and ``model.predict(path)``) on mutated and unusual images.

Weights: truncated, byte-flipped and huge-size files give a one-line :class:`UserError`, never another
exception; the huge ones also run under an address-space limit (:mod:`limits`). Images: one ``detect`` run
over a folder of broken and unusual images exits 0 or 1 with one ``Error:`` line per bad file, no
traceback, no partial output file, and every input unchanged.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cli_helpers import leftover_temp_files, run_cli
from dcnviz.convert.mxnet_params import read_params
from dcnviz.convert.weights import read_weights
from dcnviz.errors import ImageError, UserError
from dcnviz.io.images import read_image
from limits import run_limited

EXAMPLES = int(os.environ.get("DCNVIZ_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PARAMS = (Path(__file__).parent / "fixtures" / "params" / "v2.params").read_bytes()


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(5)},
                metadata={"model": "rfcn_dcn_synth"})


SAFETENSORS = _safetensors_bytes()


@st.composite
def mutated(draw, data: bytes):
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite8"]))
    out = bytearray(data)
    if kind == "truncate":
        return bytes(out[:draw(st.integers(0, len(out) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        else:  # a plausible-looking huge or negative size field
            value = draw(st.sampled_from([2 ** 31 - 1, 2 ** 32, 2 ** 40, 2 ** 62, 2 ** 63 - 1, 2 ** 64 - 1]))
            out[pos:pos + 8] = value.to_bytes(8, "little")[:len(out) - pos]
    return bytes(out)


def _one_line_user_error(call) -> None:
    try:
        call()
    except UserError as e:
        assert "\n" not in str(e) and str(e)
    # parsed: also fine (a flipped data byte is still a valid file)


@FUZZ
@given(data=mutated(PARAMS))
def test_params_reader_on_mutated_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("p") / "m.params"
    path.write_bytes(data)
    _one_line_user_error(lambda: read_params(path))


@FUZZ
@given(data=mutated(SAFETENSORS))
def test_safetensors_loader_on_mutated_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("s") / "m.safetensors"
    path.write_bytes(data)
    _one_line_user_error(lambda: read_weights(path))


def _huge_files(folder: Path) -> list[Path]:
    """Weight files whose size fields claim far more than they hold."""
    files = {}
    header = json.dumps({"w": {"dtype": "F32", "shape": [2 ** 20, 2 ** 20], "data_offsets": [0, 2 ** 42]}}).encode()
    files["shape.safetensors"] = struct.pack("<Q", len(header)) + header + b"\0" * 64
    files["header.safetensors"] = struct.pack("<Q", 2 ** 62) + b"{}"
    files["dims.params"] = (struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Iiiqq", 0xF993FAC9, 0, 2, 2 ** 30, 2 ** 30)
                            + struct.pack("<iii", 1, 0, 0) + b"\0" * 64)
    files["count.params"] = struct.pack("<QQQ", 0x112, 0, 2 ** 40) + b"\0" * 4096
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def test_huge_declared_sizes_fail_in_one_line_within_bounded_memory(tmp_path):
    paths = _huge_files(tmp_path)
    proc = run_limited(f"""
from dcnviz.convert.weights import read_weights
from dcnviz.errors import UserError
for path in {[str(p) for p in paths]!r}:
    try:
        read_weights(path, "rfcn_dcn_coco" if path.endswith(".params") else None)
        print("accepted", path)
    except UserError as e:
        print("refused", len(str(e).splitlines()))
""")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:-1] == ["refused 1"] * len(paths), proc.stdout


# ---------------------------------------------------------------------------------------------- images
def _jpeg(rgb, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (24, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def image_corpus(folder: Path) -> dict[str, bool]:
    """Broken and unusual image files in ``folder``; value: whether the reader must accept it."""
    rng = np.random.default_rng(17)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    good_jpeg, good_png = _jpeg(rgb), _png(Image.fromarray(rgb))
    files: dict[str, tuple[bytes, bool]] = {
        "ok.jpg": (good_jpeg, True),
        "cmyk.jpg": (_jpeg_cmyk(rgb), True),
        "grey16.png": (_png(Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))), True),
        "animated.gif": (_animated("GIF"), True),
        "animated.webp": (_animated("WEBP"), True),
        "png_named.jpg": (good_png, True),  # wrong extension: read by content
        "jpeg_named.png": (good_jpeg, True),
        "zero_rows.png": (_png_header_only(56, 0), False),
        "zero_cols.png": (_png_header_only(0, 40), False),
        "huge.png": (_png_header_only(65535, 65535), False),
        "empty.jpg": (b"", False),
    }
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        files[f"exif{o}.jpg"] = (_jpeg(rgb, exif=exif.tobytes()), True)
    for k in range(12):  # truncated and byte-flipped JPEGs and PNGs, seeded
        src = good_jpeg if k % 2 else good_png
        suffix = ".jpg" if k % 2 else ".png"
        if k < 6:
            data = src[:int(rng.integers(1, len(src) - 1))]
        else:
            data = bytearray(src)
            for pos in rng.integers(0, len(data), 8):
                data[pos] ^= 0xFF
            data = bytes(data)
        files[f"mutated{k}{suffix}"] = (data, None)  # may decode (Pillow is lenient) or not: either is fine
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: ok for name, (_, ok) in files.items()}


def _jpeg_cmyk(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_cli_on_broken_and_unusual_images(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    expect = image_corpus(data)
    before = _digests(data)
    proc = run_cli(["detect", "data", "--model", "fake-det", "-d", "cpu", "--json"], cwd=tmp_path)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    records = {Path(r["image"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    failed = {name for name, r in records.items() if "error" in r}
    assert len(errors) == len(failed) + (1 if failed else 0)  # one line each, then the count
    for name, ok in expect.items():
        if ok is not None:
            assert (name not in failed) == ok, (name, records.get(name))
    out = tmp_path / "runs" / "detect"
    for name, record in records.items():
        if "error" in record:
            assert not list(out.rglob(Path(name).stem + ".*")), name  # nothing written for a bad file
        else:
            assert (tmp_path / record["vis"]).is_file()
    assert _digests(data) == before  # inputs untouched
    assert leftover_temp_files(tmp_path) == []


def test_library_reader_agrees_with_the_cli(tmp_path):
    """``read_image`` (what ``model.predict(path)`` and training use) accepts and refuses the same files."""
    expect = image_corpus(tmp_path)
    for name, ok in expect.items():
        try:
            image = read_image(tmp_path / name)
        except ImageError as e:
            assert ok in (False, None) and "\n" not in str(e), name
        else:
            assert ok in (True, None), name
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape) > 0
