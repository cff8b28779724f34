"""Reading images, finding inputs, writing outputs: dcnviz.io.images / dcnviz.io.outputs, and every
bad input of the detect/segment CLI run as a subprocess (exit code, one-line message, no traceback,
nothing half-written)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error, leftover_temp_files, run_cli, validate_jsonl
from dcnviz.errors import DatasetError, ImageError, OutputError
from dcnviz.io import images as images_mod
from dcnviz.io.images import (find_images, read_image, write_bytes_atomic, write_image_atomic,
                              write_json_atomic, write_png_palette_atomic)
from dcnviz.io.outputs import check_not_inputs, increment_dir, output_names, run_dir
from imagefiles import (gradient_rgb, save, write_bomb_png, write_corrupt_png, write_exif_rotated_jpeg,
                        write_text_as_jpeg, write_truncated_jpeg)
from random_weights import write_random_safetensors

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(ROOT_USER, reason="file permissions do not restrict root")


class TestReadImage:
    def test_rgb_png_becomes_bgr(self, tmp_path):
        rgb = gradient_rgb()
        out = read_image(save(tmp_path / "a.png", rgb))
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb[..., ::-1])

    def test_grey_is_replicated(self, tmp_path):
        grey = gradient_rgb()[..., 0]
        out = read_image(save(tmp_path / "g.png", grey))
        np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))

    def test_rgba_is_composited_on_mean_colour(self, tmp_path):
        rgb = gradient_rgb()
        alpha = np.zeros(rgb.shape[:2], np.uint8)
        alpha[:, : rgb.shape[1] // 2] = 255  # left half opaque, right half transparent
        out = read_image(save(tmp_path / "a.png", np.dstack([rgb, alpha])))
        half = rgb.shape[1] // 2
        np.testing.assert_array_equal(out[:, :half], rgb[:, :half, ::-1])
        assert (out[:, half:] == images_mod.ALPHA_BACKGROUND[::-1]).all()

    def test_palette_is_expanded(self, tmp_path):
        pal = Image.fromarray(gradient_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        pal.save(tmp_path / "p.png")
        expected = np.asarray(pal.convert("RGB"))[..., ::-1]
        np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expected)

    def test_palette_with_transparency(self, tmp_path):
        pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8))
        pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        pal.save(tmp_path / "t.png", transparency=1)
        out = read_image(tmp_path / "t.png")
        assert tuple(out[0, 0]) == (0, 0, 255)  # opaque red, in BGR
        assert tuple(out[0, 1]) == images_mod.ALPHA_BACKGROUND[::-1]

    def test_16_bit_grey_is_scaled_to_8_bit(self, tmp_path):
        grey8 = gradient_rgb()[..., 0]
        out = read_image(save(tmp_path / "s.png", grey8.astype(np.uint16) * 257))
        assert Image.open(tmp_path / "s.png").mode.startswith("I")
        np.testing.assert_array_equal(out[..., 0], grey8)

    def test_cmyk_jpeg_becomes_rgb(self, tmp_path):
        cmyk = Image.fromarray(gradient_rgb()).convert("CMYK")
        cmyk.save(tmp_path / "c.jpg", quality=100)
        expected = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"))[..., ::-1]
        np.testing.assert_array_equal(read_image(tmp_path / "c.jpg"), expected)

    def test_exif_orientation_is_applied(self, tmp_path):
        rgb = gradient_rgb(24, 32)
        out = read_image(write_exif_rotated_jpeg(tmp_path / "e.jpg", rgb, orientation=6))
        assert out.shape == (32, 24, 3)
        expected = np.rot90(rgb, k=-1)[..., ::-1].astype(int)  # 6 = shown rotated 90° clockwise
        assert np.abs(out.astype(int) - expected).mean() < 3  # JPEG, quality 100

    @pytest.mark.parametrize("make, reason", [
        (lambda p: p, "no such file"),
        (lambda p: (p.write_bytes(b""), p)[1], "file is empty (0 bytes)"),
        (write_text_as_jpeg, "not an image file"),
        (write_truncated_jpeg, "corrupt or truncated"),
        (write_corrupt_png, "corrupt or truncated"),
        (write_bomb_png, "over the limit of 100 MP"),
    ], ids=["missing", "zero-byte", "text", "truncated", "corrupt", "bomb"])
    def test_bad_file_raises_one_line_image_error(self, tmp_path, make, reason):
        path = make(tmp_path / "bad.jpg")
        with pytest.raises(ImageError) as info:
            read_image(path)
        message = str(info.value)
        assert reason in message and str(path) in message and "\n" not in message

    def test_size_limit_is_checked_before_decoding(self, tmp_path, monkeypatch):
        monkeypatch.setattr(images_mod, "MAX_PIXELS", 100)
        with pytest.raises(ImageError, match=r"32x24 = 0 MP, over the limit"):
            read_image(save(tmp_path / "a.png", gradient_rgb(24, 32)))

    def test_folder_is_not_an_image(self, tmp_path):
        with pytest.raises(ImageError, match="is a folder"):
            read_image(tmp_path)

    @needs_non_root
    def test_unreadable_file(self, tmp_path):
        path = save(tmp_path / "a.png", gradient_rgb())
        path.chmod(0)
        with pytest.raises(ImageError, match="ermission denied"):
            read_image(path)


class TestFindImages:
    @pytest.fixture
    def tree(self, tmp_path):
        for name in ["b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", "sub/c.jpeg", "sub/deeper/d.webp",
                     ".git/e.jpg"]:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(b"x")
        return tmp_path

    def test_folder_lists_images_sorted(self, tree):
        assert find_images([tree]) == [tree / "a.PNG", tree / "b.jpg"]

    def test_natural_order(self, tmp_path):
        for name in ["img10.jpg", "img2.jpg", "img1.jpg"]:
            (tmp_path / name).write_bytes(b"x")
        assert [p.name for p in find_images([tmp_path])] == ["img1.jpg", "img2.jpg", "img10.jpg"]

    def test_recursive_skips_hidden(self, tree):
        found = find_images([str(tree)], recursive=True)
        assert found == [tree / "a.PNG", tree / "b.jpg", tree / "sub/c.jpeg", tree / "sub/deeper/d.webp"]

    def test_glob_and_double_star(self, tree):
        assert find_images([f"{tree}/*.jpg"]) == [tree / "b.jpg"]
        assert find_images([f"{tree}/**/*.jp*g"]) == [tree / "b.jpg", tree / "sub/c.jpeg"]

    def test_duplicates_are_dropped(self, tree):
        found = find_images([tree / "b.jpg", tree, f"{tree}/b.*", tree / "sub" / ".." / "b.jpg"])
        assert found == [tree / "a.PNG", tree / "b.jpg"]

    def test_missing_path(self, tree):
        with pytest.raises(DatasetError, match="no such file or folder: '.*nope.jpg'"):
            find_images([tree / "nope.jpg"])
        # among several inputs it is listed, for the run to report and skip like an unreadable image
        assert find_images([tree / "b.jpg", tree / "nope.jpg"])[-1] == tree / "nope.jpg"
        with pytest.raises(ImageError, match="nope.jpg"):
            read_image(tree / "nope.jpg")

    def test_folder_without_images_hints_recursive(self, tree):
        (tree / "empty").mkdir()
        with pytest.raises(DatasetError, match="contains no images") as info:
            find_images([tree / "empty"])
        assert "--recursive" not in str(info.value)
        (tree / "only_sub" / "x").mkdir(parents=True)
        (tree / "only_sub" / "x" / "f.jpg").write_bytes(b"x")
        with pytest.raises(DatasetError, match="use --recursive"):
            find_images([tree / "only_sub"])
        assert find_images([tree / "only_sub"], recursive=True) == [tree / "only_sub/x/f.jpg"]

    def test_glob_without_images(self, tree):
        with pytest.raises(DatasetError, match="matched nothing"):
            find_images([f"{tree}/*.bmp"])
        with pytest.raises(DatasetError, match="matched 1 paths but no images"):
            find_images([f"{tree}/*.txt"])

    def test_explicit_file_needs_image_suffix(self, tree):
        with pytest.raises(DatasetError, match="not a supported image type"):
            find_images([tree / "notes.txt"])


class TestAtomicWriters:
    def test_json_failure_keeps_old_file_and_leaves_no_temp(self, tmp_path):
        path = tmp_path / "r.json"
        write_json_atomic(path, {"a": 1})
        with pytest.raises(ValueError):
            write_json_atomic(path, {"a": float("nan")})
        assert path.read_text() == '{\n  "a": 1\n}\n'
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]

    def test_interrupted_replace_leaves_no_file(self, tmp_path, monkeypatch):
        def fail(src, dst):
            raise KeyboardInterrupt

        monkeypatch.setattr(images_mod.os, "replace", fail)
        with pytest.raises(KeyboardInterrupt):
            write_bytes_atomic(tmp_path / "sub" / "x.bin", b"data")
        assert list((tmp_path / "sub").iterdir()) == []

    def test_file_system_errors_are_output_errors(self, tmp_path, monkeypatch):
        (tmp_path / "file").write_text("x")
        with pytest.raises(OutputError, match="cannot write '.*file/x.json'"):
            write_json_atomic(tmp_path / "file" / "x.json", {})

        def disk_full(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(images_mod.os, "replace", disk_full)
        with pytest.raises(OutputError, match="cannot write '.*y.json': No space left on device"):
            write_json_atomic(tmp_path / "y.json", {})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]

    def test_image_unknown_suffix_writes_nothing(self, tmp_path):
        with pytest.raises(Exception):
            write_image_atomic(tmp_path / "x.unknown", np.zeros((4, 4, 3), np.uint8))
        assert list(tmp_path.iterdir()) == []

    def test_written_file_has_umask_mode(self, tmp_path):
        write_bytes_atomic(tmp_path / "x.bin", b"1")
        mask = os.umask(0)
        os.umask(mask)
        assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o666 & ~mask

    def test_palette_png_round_trip(self, tmp_path):
        labels = np.array([[0, 1, 2], [2, 255, 0]], np.uint8)
        write_png_palette_atomic(tmp_path / "m.png", labels, [(1, 2, 3), (4, 5, 6), (7, 8, 9)])
        im = Image.open(tmp_path / "m.png")
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), labels)
        assert im.getpalette()[:9] == [1, 2, 3, 4, 5, 6, 7, 8, 9]

    def test_json_layout(self, tmp_path):
        write_json_atomic(tmp_path / "r.json", {"boxes": [{"box": [1, 2]}], "n": []})
        assert (tmp_path / "r.json").read_text() == '{\n  "boxes": [\n    {"box": [1, 2]}\n  ],\n  "n": []\n}\n'


class TestOutputs:
    def test_increment_never_reuses(self, tmp_path):
        base = tmp_path / "runs" / "detect"
        first = increment_dir(base)
        (first / "keep.txt").write_text("user data")
        (tmp_path / "runs" / "detect2").write_text("a file in the way")
        assert increment_dir(base) == tmp_path / "runs" / "detect3"
        assert increment_dir(base) == tmp_path / "runs" / "detect4"
        assert (first / "keep.txt").read_text() == "user data"

    def test_exist_ok_reuses(self, tmp_path):
        first = increment_dir(tmp_path / "out")
        (first / "keep.txt").write_text("x")
        assert increment_dir(tmp_path / "out", exist_ok=True) == first
        assert (first / "keep.txt").read_text() == "x"

    def test_file_in_the_way(self, tmp_path):
        (tmp_path / "f").write_text("x")
        with pytest.raises(OutputError, match="'.*/f' exists and is not a folder"):
            increment_dir(tmp_path / "f", exist_ok=True)
        with pytest.raises(OutputError, match="cannot create output folder '.*/f/sub': '.*/f' exists"):
            increment_dir(tmp_path / "f" / "sub")

    @needs_non_root
    def test_read_only_parent(self, tmp_path):
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(OutputError, match="ermission denied"):
            increment_dir(tmp_path / "ro" / "runs")

    def test_refuses_to_write_next_to_inputs(self, tmp_path):
        image = tmp_path / "data" / "a.jpg"
        with pytest.raises(OutputError, match="choose another --out"):
            check_not_inputs(tmp_path / "data", ["vis"], [image])
        with pytest.raises(OutputError):
            check_not_inputs(tmp_path, ["data"], [image])
        check_not_inputs(tmp_path / "out", ["vis"], [image])

    def test_run_dir_refuses_results_inside_inputs(self, tmp_path):
        # A results folder inside the data: a second recursive run finds its own output as input.
        earlier = tmp_path / "data" / "results" / "vis" / "a.png"
        with pytest.raises(OutputError, match="next to the input image"):
            with run_dir(tmp_path / "data" / "results", True, ["vis", "preds"], [earlier]):
                pass

    def test_run_dir_removes_only_its_own_empty_folder(self, tmp_path):
        with run_dir(tmp_path / "o", False, ["vis"], []) as folder:
            (folder / "vis").mkdir()
        assert not folder.exists()
        with run_dir(tmp_path / "o", False, ["vis"], []) as folder:
            (folder / "vis").mkdir()
            (folder / "vis" / "x.png").write_bytes(b"x")
        assert (folder / "vis" / "x.png").exists()
        (tmp_path / "mine").mkdir()
        with run_dir(tmp_path / "mine", True, ["vis"], []) as folder:
            pass
        assert folder.is_dir()
        with run_dir(tmp_path / "a" / "b" / "c", False, [], []) as folder:  # parents made for it go too
            pass
        assert not (tmp_path / "a").exists()
        (tmp_path / "a" / "b2").mkdir(parents=True)
        with run_dir(tmp_path / "a" / "b" / "c", False, [], []) as folder:  # up to one still in use
            pass
        assert (tmp_path / "a" / "b2").is_dir() and not (tmp_path / "a" / "b").exists()

    def test_output_names(self, tmp_path):
        flat = [tmp_path / "a.jpg", tmp_path / "b.png"]
        assert output_names(flat) == {flat[0]: Path("a"), flat[1]: Path("b")}
        nested = [tmp_path / "x" / "a.jpg", tmp_path / "y" / "a.jpg", tmp_path / "y" / "a.png"]
        assert output_names(nested) == {nested[0]: Path("x/a"), nested[1]: Path("y/a_jpg"),
                                        nested[2]: Path("y/a_png")}


class TestBadInputsCLI:
    """Each bad input, run through ``dcnviz detect`` in a subprocess."""

    @pytest.mark.parametrize("name, make, fragment", [
        ("missing.jpg", None, "no such file or folder: 'missing.jpg'"),
        ("empty.jpg", lambda p: p.write_bytes(b""), "cannot read image 'empty.jpg': file is empty"),
        ("text.jpg", write_text_as_jpeg, "cannot read image 'text.jpg': not an image file"),
        ("trunc.jpg", write_truncated_jpeg, "cannot read image 'trunc.jpg': corrupt or truncated"),
        ("corrupt.png", write_corrupt_png, "cannot read image 'corrupt.png': corrupt or truncated"),
        ("bomb.png", write_bomb_png, "cannot read image 'bomb.png': image is over the limit"),
        ("notes.txt", lambda p: p.write_text("x"), "'notes.txt' is not a supported image type"),
    ], ids=["missing", "zero-byte", "text", "truncated", "corrupt", "bomb", "wrong-suffix"])
    def test_single_bad_file(self, tmp_path, name, make, fragment):
        if make is not None:
            make(tmp_path / name)
        proc = run_cli(["detect", name, "--model", "fake-det", "--device", "cpu"], cwd=tmp_path)
        assert_one_line_error(proc, 1, fragment)
        assert not (tmp_path / "runs").exists()  # neither runs/detect nor the runs/ it was made in

    def test_folder_without_images(self, tmp_path):
        (tmp_path / "empty").mkdir()
        proc = run_cli(["detect", "empty", "--model", "fake-det"], cwd=tmp_path)
        assert_one_line_error(proc, 1, "folder 'empty' contains no images")

    @pytest.mark.parametrize("command, model", [("detect", "fake-det"), ("segment", "fake-seg")])
    def test_folder_run_skips_bad_files(self, tmp_path, command, model):
        data = tmp_path / "data"
        data.mkdir()
        save(data / "good1.jpg", gradient_rgb())
        save(data / "good2.png", gradient_rgb()[..., 0])
        (data / "empty.jpg").write_bytes(b"")
        write_text_as_jpeg(data / "text.jpg")
        write_truncated_jpeg(data / "trunc.jpg")
        write_corrupt_png(data / "corrupt.png")
        write_bomb_png(data / "bomb.png")
        proc = run_cli([command, "data", "--model", model, "--device", "cpu"], cwd=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 6, proc.stderr
        for bad in ["bomb.png", "corrupt.png", "empty.jpg", "text.jpg", "trunc.jpg"]:
            assert sum(f"'data/{bad}'" in e and e.endswith("; skipped") for e in errors) == 1
        assert errors[-1] == "Error: 5 of 7 images could not be read and were skipped"
        out = tmp_path / "runs" / command
        assert sorted(p.name for p in (out / "preds").iterdir()) == ["good1.json", "good2.json"]
        assert sorted(p.name for p in (out / "vis").iterdir()) == ["good1.jpg", "good2.png"]
        assert f"Results saved to runs/{command}" in proc.stderr
        assert leftover_temp_files(tmp_path) == []

    def test_image_modes_and_exif_are_converted(self, tmp_path):
        """Grey, palette, RGBA, 16-bit and EXIF-rotated inputs reach the model as the upright RGB image:
        with no detections kept (--conf 1) the annotated PNG is exactly the converted input."""
        data = tmp_path / "data"
        data.mkdir()
        rgb = gradient_rgb()
        grey = rgb[..., 0]
        alpha = np.full(grey.shape, 255, np.uint8)
        alpha[:, :8] = 0  # a transparent stripe
        palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        palette.save(data / "palette.png")
        save(data / "grey.png", grey)
        save(data / "rgba.png", np.dstack([rgb, alpha]))
        save(data / "grey16.png", grey.astype(np.uint16) * 257)
        exif = Image.Exif()
        exif[0x0112] = 6  # shown rotated 90 degrees clockwise
        save(data / "exif.png", rgb, exif=exif.tobytes())
        composited = rgb.copy()
        composited[:, :8] = images_mod.ALPHA_BACKGROUND
        expected = {"palette": np.asarray(palette.convert("RGB")), "grey": np.dstack([grey] * 3),
                    "rgba": composited, "grey16": np.dstack([grey] * 3), "exif": np.rot90(rgb, k=-1)}
        proc = run_cli(["detect", "data", "--model", "fake-det", "-d", "cpu", "--conf", "1", "--json"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        records = {Path(r["image"]).stem: r for r in validate_jsonl(proc.stdout, "detections")}
        assert sorted(records) == sorted(expected)
        for name, rgb_expected in expected.items():
            record = records[name]
            assert (record["height"], record["width"]) == rgb_expected.shape[:2] and record["detections"] == []
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / record["vis"])), rgb_expected)

    def test_unknown_model_suggests_names(self, tmp_path):
        save(tmp_path / "a.jpg", gradient_rgb())
        proc = run_cli(["detect", "a.jpg", "--model", "fake-dett"], cwd=tmp_path)
        assert_one_line_error(proc, 2, "unknown model 'fake-dett'", "did you mean fake-det")

    def test_weights_of_another_model(self, tmp_path):
        save(tmp_path / "a.jpg", gradient_rgb())
        (tmp_path / "w.safetensors").write_text("fake-seg")
        proc = run_cli(["detect", "a.jpg", "--model", "fake-det", "--weights", "w.safetensors", "-d", "cpu"],
                       cwd=tmp_path)
        assert_one_line_error(proc, 1, "weights file 'w.safetensors' is for model 'fake-seg'")
        assert not (tmp_path / "runs" / "detect").exists()

    @pytest.mark.parametrize("write, fragment", [
        (lambda p: write_random_safetensors("deeplab_dcn_synth", p),
         "holds weights of model deeplab_dcn_synth, not rfcn_dcn_synth"),
        (lambda p: write_random_safetensors("rfcn_synth", p, model_name="rfcn_dcn_synth"),
         "does not fit model rfcn_dcn_synth: 10 missing (backbone.res5a.branch2b_offset.bias, "),
        (lambda p: save(p, gradient_rgb(), format="PNG"),
         "neither an MXNet .params file nor a readable .safetensors file"),
    ], ids=["other-model", "other-architecture", "not-weights"])
    def test_weights_that_do_not_fit_the_model(self, tmp_path, write, fragment):
        """The real loader: a weights file of another model is refused before any image is processed."""
        save(tmp_path / "a.jpg", gradient_rgb())
        write(tmp_path / "w.safetensors")
        proc = run_cli(["detect", "a.jpg", "-m", "rfcn_dcn_synth", "-w", "w.safetensors", "-d", "cpu"], cwd=tmp_path,
                       fake=False)
        assert_one_line_error(proc, 1, "w.safetensors", fragment)
        assert not (tmp_path / "runs" / "detect").exists()

    @pytest.mark.parametrize("command, model", [("detect", "rfcn_dcn_synth"), ("segment", "deeplab_dcn_synth")])
    def test_missing_bundled_weights_say_how_to_get_them(self, tmp_path, command, model):
        save(tmp_path / "a.jpg", gradient_rgb())
        empty = tmp_path / "weights"
        empty.mkdir()
        proc = run_cli([command, "a.jpg", "-d", "cpu"], cwd=tmp_path, bundled_dir=empty)
        assert_one_line_error(proc, 1, f"the bundled weights of {model} are missing: "
                                       f"{empty}/{model}.safetensors does not exist", "weights/README.md",
                              "--weights FILE")
        assert not (tmp_path / "runs" / command).exists()

    def test_cuda_without_gpu(self, tmp_path):
        save(tmp_path / "a.jpg", gradient_rgb())
        proc = run_cli(["detect", "a.jpg", "--model", "fake-det", "--device", "cuda:0"], cwd=tmp_path,
                       env={"CUDA_VISIBLE_DEVICES": ""})
        assert_one_line_error(proc, 1, "--device cuda:0 requested but CUDA is not usable",
                              "torch.cuda.is_available()=False", "device count 0", "CUDA_VISIBLE_DEVICES=",
                              "use --device cpu")

    def test_output_below_a_file(self, tmp_path):
        save(tmp_path / "a.jpg", gradient_rgb())
        (tmp_path / "file").write_text("x")
        proc = run_cli(["detect", "a.jpg", "--model", "fake-det", "-d", "cpu", "--out", "file/sub"], cwd=tmp_path)
        assert_one_line_error(proc, 1, "cannot create output folder 'file/sub': 'file' exists and is not a folder")
        assert (tmp_path / "file").read_text() == "x"

    @needs_non_root
    def test_read_only_output_folder(self, tmp_path):
        save(tmp_path / "a.jpg", gradient_rgb())
        (tmp_path / "ro").mkdir(mode=0o500)
        proc = run_cli(["detect", "a.jpg", "--model", "fake-det", "-d", "cpu", "--out", "ro", "--exist-ok"],
                       cwd=tmp_path)
        assert_one_line_error(proc, 1, "output folder 'ro' is not writable")

    @pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux sysfs")
    def test_output_folder_nobody_may_create(self, tmp_path):
        """sysfs refuses new folders even to root, so this runs for every user (the test above cannot
        restrict root)."""
        save(tmp_path / "a.jpg", gradient_rgb())
        proc = run_cli(["detect", "a.jpg", "--model", "fake-det", "-d", "cpu", "--out", "/sys/dcnviz-test-run"],
                       cwd=tmp_path)
        assert_one_line_error(proc, 1, "cannot create output folder '/sys/dcnviz-test-run': ")
        assert not os.path.exists("/sys/dcnviz-test-run")

    def test_out_holding_inputs_is_refused(self, tmp_path):
        data = tmp_path / "data"
        data.mkdir()
        original = save(data / "a.png", gradient_rgb()).read_bytes()
        args = ["--model", "fake-det", "-d", "cpu", "--exist-ok"]
        proc = run_cli(["detect", "data", "--out", "data", *args], cwd=tmp_path)
        assert_one_line_error(proc, 1, "would write next to the input image 'data/a.png'", "choose another --out")
        assert sorted(p.name for p in data.iterdir()) == ["a.png"]
        assert (data / "a.png").read_bytes() == original

    def test_unexpected_error_is_one_line_unless_debug(self, tmp_path):
        save(tmp_path / "a.jpg", gradient_rgb())
        args = ["detect", "a.jpg", "--model", "fake-det", "-d", "cpu", "--max-det", "2"]
        env = {"DCNVIZ_FAKE_CRASH": "1"}
        proc = run_cli(args, cwd=tmp_path, env=env)
        assert_one_line_error(proc, 1, "RuntimeError: fake model crashed", "run with --debug")
        proc = run_cli(args + ["--debug"], cwd=tmp_path, env=env)
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "fake model crashed" in proc.stderr

    def test_real_entry_point(self, tmp_path):
        proc = run_cli(["detect", "missing.jpg"], cwd=tmp_path, fake=False)
        assert_one_line_error(proc, 1, "no such file or folder: 'missing.jpg'")
        save(tmp_path / "a.jpg", gradient_rgb())
        proc = run_cli(["detect", "a.jpg", "--model", "rfcn_dcn_sytnh"], cwd=tmp_path, fake=False)
        assert_one_line_error(proc, 2, "unknown model 'rfcn_dcn_sytnh'; did you mean rfcn_dcn_synth")
