"""Inputs are never overwritten (issue 17, defect 1): every planned output file is compared with every
input by resolved real path and by (st_dev, st_ino) before anything is written."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run_cli
from dcnviz.errors import OutputError
from dcnviz.io.outputs import check_not_inputs
from imagefiles import gradient_rgb, save


def _save(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(path, array)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_recursive_run_into_the_parent_of_its_input_folder_is_refused(tmp_path):
    """``detect photos/vis -r --out photos --exist-ok`` maps photos/vis/a/cat.png onto itself."""
    photos = tmp_path / "photos"
    _save(photos / "vis" / "a" / "cat.png", gradient_rgb())
    _save(photos / "vis" / "b" / "dog.png", gradient_rgb()[::-1].copy())
    before = _digest(photos)
    proc = run_cli(["detect", "photos/vis", "-r", "--out", "photos", "--exist-ok", "--model", "fake-det",
                    "-d", "cpu"], cwd=tmp_path)
    assert_one_line_error(proc, 1, "output file 'photos/vis/a/cat.png' would overwrite the input image",
                          "choose another --out")
    assert _digest(photos) == before
    assert not (photos / "preds").exists()


def test_output_reached_through_a_symlinked_folder(tmp_path):
    data = tmp_path / "data"
    _save(data / "x" / "cat.png", gradient_rgb())
    (tmp_path / "out").mkdir()
    os.symlink(data, tmp_path / "out" / "vis")  # out/vis/x/cat.png is data/x/cat.png
    with pytest.raises(OutputError, match="would overwrite the input image"):
        check_not_inputs(tmp_path / "out", (), [data / "x" / "cat.png"], ["vis/x/cat.png"])


def test_output_that_is_a_hard_link_of_an_input(tmp_path):
    _save(tmp_path / "in" / "cat.png", gradient_rgb())
    (tmp_path / "out" / "vis").mkdir(parents=True)
    os.link(tmp_path / "in" / "cat.png", tmp_path / "out" / "vis" / "cat.png")
    with pytest.raises(OutputError, match="'.*out/vis/cat.png' would overwrite the input image '.*in/cat.png'"):
        check_not_inputs(tmp_path / "out", ("vis",), [tmp_path / "in" / "cat.png"], ["vis/cat.png"])


def test_unrelated_outputs_pass(tmp_path):
    _save(tmp_path / "in" / "cat.png", gradient_rgb())
    check_not_inputs(tmp_path / "out", ("vis", "preds"), [tmp_path / "in" / "cat.png"],
                     ["vis/cat.png", "preds/cat.json"])


def test_segment_masks_are_checked_too(tmp_path):
    """The mask of photos/masks/a/b.png would land on the input itself."""
    _save(tmp_path / "photos" / "masks" / "a" / "b.png", gradient_rgb())
    _save(tmp_path / "photos" / "masks" / "c" / "d.png", gradient_rgb())
    before = _digest(tmp_path / "photos")
    proc = run_cli(["segment", "photos/masks", "-r", "--out", "photos", "--exist-ok", "--model", "fake-seg",
                    "-d", "cpu"], cwd=tmp_path)
    assert_one_line_error(proc, 1, "would overwrite the input image")
    assert _digest(tmp_path / "photos") == before
