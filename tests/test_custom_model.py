"""``--model FILE.py:FUNCTION``: any nn.Module with torchvision or dcnviz deformable layers, found by hooks,
named by module path, its boundary rule and mask recorded; bad specs are one-line usage errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import ROOT, assert_one_line_error
from dcnviz.analysis import sampling_locations
from dcnviz.analysis.effective import feature_stride
from dcnviz.io.images import read_image
from dcnviz.models.custom import CustomModelError, is_custom_spec, load_custom
from dcnviz.errors import WeightsError
from test_analysis_cli import cli

HELPERS = ROOT / "tests" / "custom_models.py"
SAMPLE = ROOT / "samples" / "synth_rings.jpg"  # 500x375


def test_spec_and_loading(tmp_path):
    assert is_custom_spec("a/b.py:build") and not is_custom_spec("rfcn_dcn_synth") and not is_custom_spec(None)
    cm = load_custom(f"{HELPERS}:modulated")
    assert list(cm.layers) == ["dcns.0", "dcns.1"] and not cm.module.training
    calls, prep, data = cm.capture(read_image(SAMPLE))
    assert [c.name for c in calls] == ["dcns.0", "dcns.1"] and all(c.boundary == "dcnv2" for c in calls)
    assert data.shape == (1, 3, 375, 500) and prep.scale == 1.0 and calls[0].mask.shape == (1, 9, 94, 125)
    assert feature_stride((375, 500), (94, 125)) == 4.0
    cm = load_custom(f"{HELPERS}:dcnv1")  # no preprocess: RGB in [0, 1]
    calls, prep, data = cm.capture(read_image(SAMPLE))
    assert calls[0].boundary == "dcnv1" and calls[0].deformable_groups == 2 and calls[0].mask is None
    assert float(data.max()) <= 1.0 and float(data.min()) >= 0.0
    for function, fragment in [("missing", "has no function missing"), ("no_deformable", "no deformable conv"),
                               ("not_a_module", "must return an nn.Module"), ("raises", "weights server unreachable")]:
        with pytest.raises(CustomModelError, match=fragment):
            load_custom(f"{HELPERS}:{function}")
    with pytest.raises(CustomModelError, match="no such file"):
        load_custom(f"{tmp_path / 'none.py'}:build")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(CustomModelError, match="ModuleNotFoundError"):
        load_custom(f"{broken}:build")


def test_weights(tmp_path):
    cm = load_custom(f"{HELPERS}:dcnv1")
    state = {k: torch.full_like(v, 0.5) for k, v in cm.module.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, path)
    cm = load_custom(f"{HELPERS}:dcnv1", path)
    assert torch.equal(cm.module.dcn.weight, torch.full_like(cm.module.dcn.weight, 0.5))
    save_file({"conv.weight": state["conv.weight"]}, tmp_path / "part.safetensors")
    with pytest.raises(WeightsError, match="does not fit"):
        load_custom(f"{HELPERS}:dcnv1", tmp_path / "part.safetensors")
    (tmp_path / "w.pt").write_bytes(b"\x80\x04")
    with pytest.raises(WeightsError, match=".safetensors"):
        load_custom(f"{HELPERS}:dcnv1", tmp_path / "w.pt")


def test_boundary_rules():
    # one 3x3 layer, zero offsets, unit at the corner: its first row and column sample at -1
    offsets = np.zeros((18, 4, 4))
    from dcnviz.analysis import LayerGeometry
    geom = LayerGeometry(3, 1, 1, 1)
    v1 = sampling_locations([offsets + 0.5], (0, 0), geom, boundary="dcnv1")
    v2 = sampling_locations([offsets + 0.5], (0, 0), geom, boundary="dcnv2")
    assert v2.valid.sum() == 9 and v1.valid.sum() == 4  # -0.5 is inside only by the DCNv2 rule
    with pytest.raises(ValueError):
        sampling_locations([offsets], (0, 0), geom, boundary="v3")


def test_effective_cli(tmp_path):
    proc = cli(["effective", SAMPLE, "--model", f"{HELPERS}:modulated", "--at", "250,180", "--cell", "64"], tmp_path,
               subprocess=True)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "effective"
    record = json.loads((out / "synth_rings_dcns_1.json").read_text())
    assert [l["name"] for l in record["layers"]] == ["dcns.1", "dcns.0"]
    assert [l["feature_stride"] for l in record["layers"]] == [4.0, 4.0]
    (node,) = record["nodes"]
    assert node["offsets_levels"] == 2 and np.shape(node["points"]) == (1, 81, 2)  # --group all: (G, 81, 2)
    top, lower = node["layers"]
    assert top["boundary"] == "dcnv2" and top["taps"] == list(range(9)) and len(top["mask"]) == 9
    assert all(0 < m < 1 for m in top["mask"] + lower["mask"])
    assert np.load(out / "synth_rings_dcns_1_erf.npy").shape == (1, 375, 500)
    assert node["region"]["error"] <= 0.1


@pytest.mark.parametrize("spec,args,code,fragment", [
    ("custom_models.py:nothing", [], 2, "has no function nothing"),
    ("custom_models.py:no_deformable", [], 2, "no deformable conv"),
    ("missing.py:build", [], 2, "no such file"),
    ("custom_models.py:modulated", ["--layer", "dcns.7"], 2, "dcns.0, dcns.1"),
    ("custom_models.py:modulated", ["--detection", "0"], 2, "no detection head"),
    ("custom_models.py:modulated", ["--weights", "w.params"], 2, ".safetensors"),
    ("custom_models.py:modulated", ["--weights", "bad.safetensors"], 1, "bad.safetensors"),
])
def test_cli_errors(tmp_path, spec, args, code, fragment):
    (tmp_path / "w.params").write_bytes(b"x")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    spec = str(ROOT / "tests" / spec)
    proc = cli(["effective", SAMPLE, "--model", spec, *args], tmp_path)
    assert_one_line_error(proc, code, fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


def test_offsets_cli(tmp_path):
    """offsets through --model: layers by module path, units at --at or the background, points composed
    through both modulated layers (same map), hollow by the DCNv2 rule; a strided DCNv1 layer alone."""
    from dcnviz.analysis.custom import inspect_custom

    proc = cli(["offsets", SAMPLE, "--model", f"{HELPERS}:modulated", "--at", "250,180", "--group", "0"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "runs" / "offsets" / "synth_rings_dcns_1.json").read_text())
    assert [l["name"] for l in record["layers"]] == ["dcns.1", "dcns.0"]
    (unit,) = record["units"]
    assert len(unit["points"]) == 81 and unit["cell"] == [45, 62]  # 180 // 4, 250 // 4
    seen, _ = inspect_custom(load_custom(f"{HELPERS}:modulated"), read_image(SAMPLE))
    assert [l.boundary for l in seen.layers] == ["dcnv2", "dcnv2"] and seen.layer("dcns.0").input_size == (94, 125)
    expected = seen.samples(seen.unit(unit["cell"], "dcns.1"), "dcns.1", 2, group=0)
    assert np.allclose(unit["points"], expected.xy, rtol=0, atol=0.005 + 1e-9)  # the JSON keeps 1/100 px
    assert unit["valid"] == expected.locations.valid.tolist()
    proc = cli(["offsets", SAMPLE, "--model", f"{HELPERS}:dcnv1", "--out", "dcnv1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "dcnv1" / "synth_rings_dcn.json").read_text())
    assert record["layers"][0]["feature_stride"] == 4.0 and record["layers"][0]["deformable_groups"] == 2
    assert [u["kind"] for u in record["units"]] == ["background"]
    assert np.shape(record["units"][0]["points"]) == (2, 9, 2)  # --group all: both groups
    proc = cli(["offsets", SAMPLE, "--model", f"{HELPERS}:dcnv1", "--levels", "2"], tmp_path)
    assert_one_line_error(proc, 2, "--levels")
    proc = cli(["offsets", SAMPLE, "--model", f"{HELPERS}:modulated", "--annotation", HELPERS], tmp_path)
    assert_one_line_error(proc, 2, "--annotation")


def test_dilation_stats_cli(tmp_path):
    """dilation-stats --model FILE.py:FUNCTION: per-layer records named by module path, each layer bucketed on
    its own map with its own feature stride. A 256x128 image with a small box [16, 47]² and a medium one
    [128, 255] x [0, 127] (0-based inclusive); `low` (stride 4, 32x64 cells centred at 4k + 2) and `high`
    (stride 8, 16x32 cells centred at 8k + 4). The offsets spread the taps so the effective dilations are
    1.5 and 3 for every filter (tests/custom_models.py:TwoStrides)."""
    import cv2

    from test_analysis_cli import voc_xml

    root = tmp_path / "VOC"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    cv2.imwrite(str(root / "JPEGImages" / "a.jpg"), np.full((128, 256, 3), 90, np.uint8))
    objects = [("blob", (17, 17, 48, 48), 0), ("star", (129, 1, 256, 128), 0)]  # 1-based, as in the XML
    (root / "Annotations" / "a.xml").write_text(voc_xml(256, 128, objects))
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    proc = cli(["dilation-stats", "--data", root, "--model", f"{HELPERS}:two_strides", "--json", "-o",
                tmp_path / "out"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record == json.loads((tmp_path / "out" / "stats.json").read_text())
    assert list(record["layers"]) == ["high", "low"]  # top first
    assert record["config"]["feature_strides"] == {"high": 8.0, "low": 4.0}
    # low, stride 4: small 8x8 cells (centres 18 ... 46), medium 32x32 (x 130 ... 254), the rest background
    # high, stride 8: small 4x4 (centres 20 ... 44), medium 16x16 (x 132 ... 252)
    expected = {"low": (1.5, {"small": 64, "medium": 1024, "large": 0, "background": 2048 - 64 - 1024}),
                "high": (3.0, {"small": 16, "medium": 256, "large": 0, "background": 512 - 16 - 256})}
    for layer, (dilation, counts) in expected.items():
        cells = record["layers"][layer]
        assert {b: c["n"] for b, c in cells.items()} == counts
        for bucket, n in counts.items():
            if n:
                assert cells[bucket]["mean"] == pytest.approx(dilation, abs=1e-9)
                assert cells[bucket]["std"] == pytest.approx(0, abs=1e-9)
    assert sorted(p.name for p in (tmp_path / "out").glob("hist_*.png")) == ["hist_high.png", "hist_low.png"]
    (tmp_path / "w.params").write_bytes(b"not read")
    proc = cli(["dilation-stats", "--data", root, "--model", f"{HELPERS}:two_strides", "--weights",
                tmp_path / "w.params"], tmp_path)
    assert_one_line_error(proc, 2, "'--weights'", ".safetensors weights only")
    assert not (tmp_path / "runs").exists()  # a usage error leaves no output folder behind
