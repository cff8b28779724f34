"""Models in bfloat16 (detect/segment --dtype bfloat16, --half): the bundled detector finds the same
objects as in float32 on samples/synth_mixed.jpg (same classes, boxes within 3 px, scores within 0.03:
bfloat16 keeps about 3 significant digits, so a box coordinate of ~400 px can move by a pixel or two)."""
import json
from pathlib import Path

from click.testing import CliRunner

from dcnviz.cli import main

SAMPLE = Path(__file__).parent.parent / "samples" / "synth_mixed.jpg"


def _detections(tmp_path, *args):
    result = CliRunner().invoke(main, ["detect", str(SAMPLE), "-m", "rfcn_dcn_synth", "-q", "-o",
                                       str(tmp_path / "_".join(args or ["f32"])), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.splitlines()[0])["detections"]


def test_detect_bfloat16_finds_what_float32_finds(tmp_path):
    want = _detections(tmp_path)
    got = _detections(tmp_path, "--dtype", "bfloat16")
    assert want and len(got) == len(want)
    for g, w in zip(sorted(got, key=lambda d: -d["score"]), sorted(want, key=lambda d: -d["score"])):
        assert g["class_id"] == w["class_id"]
        assert max(abs(a - b) for a, b in zip(g["box"], w["box"])) <= 3, (g, w)
        assert abs(g["score"] - w["score"]) <= 0.03, (g, w)
    assert _detections(tmp_path, "--half") == got


def test_half_contradicting_dtype_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["detect", str(SAMPLE), "-o", str(tmp_path / "x"), "--half", "--dtype",
                                       "float32"])
    assert result.exit_code == 2 and "--half means bfloat16" in result.output
    assert not (tmp_path / "x").exists()


def _points(tmp_path, *args):
    result = CliRunner().invoke(main, ["offsets", str(SAMPLE), "-m", "rfcn_dcn_synth", "-q", "-o",
                                       str(tmp_path / "_".join(["o", *args])), "--json", *args])
    assert result.exit_code == 0, result.output
    return list(_numbers([unit["points"] for unit in json.loads(result.output.splitlines()[0])["units"]]))


def _numbers(nested):
    for v in nested:
        yield from _numbers(v) if isinstance(v, list) else [v]


def test_offsets_bfloat16_samples_where_float32_samples(tmp_path):
    want, got = _points(tmp_path), _points(tmp_path, "--half")
    assert want and len(got) == len(want)
    assert max(abs(g - w) for g, w in zip(got, want)) <= 1.5  # image pixels


def test_custom_models_refuse_bfloat16(tmp_path):
    model = Path(__file__).parent / "custom_models.py"
    result = CliRunner().invoke(main, ["offsets", str(SAMPLE), "-m", f"{model}:dcnv1", "-o", str(tmp_path / "c"),
                                       "--dtype", "bfloat16"])
    assert result.exit_code == 2 and "runs in float32" in result.output, result.output


def test_bfloat16_on_a_cpu_without_it_warns_once(tmp_path, monkeypatch):
    """Where oneDNN has no bfloat16 kernels (no AVX512-BF16 or AMX) bfloat16 runs several times slower than
    float32, the opposite of what --half is for: one warning line (none with --quiet, none on a CPU with
    them). Both answers are forced, so the test means the same on every CPU."""
    from dcnviz.cli import common

    def run(native, *args):
        monkeypatch.setattr(common, "native_bfloat16_cpu", lambda: native)
        out = tmp_path / f"{native}{''.join(args)}"
        result = CliRunner().invoke(main, ["detect", str(SAMPLE), "-m", "rfcn_dcn_synth", "-o", str(out), *args])
        assert result.exit_code == 0, result.output
        return [line for line in result.stderr.splitlines() if "no native bfloat16" in line]

    assert run(False, "--half") == ["Warning: this CPU has no native bfloat16 (AVX512-BF16 or AMX): --dtype bfloat16 "
                                    "runs several times slower than float32 here"]
    assert run(False, "--half", "-q") == []
    assert run(True, "--half") == []
    assert run(False) == []  # float32
    monkeypatch.setattr(common, "native_bfloat16_cpu", lambda: False)
    result = CliRunner().invoke(main, ["offsets", str(SAMPLE), "-m", "rfcn_dcn_synth", "-o", str(tmp_path / "o"),
                                       "--half"])
    assert result.exit_code == 0 and result.stderr.count("no native bfloat16") == 1, result.output
