"""``dcnviz bench model`` (dcnviz.bench_model.model, attached to the bench group by the CLI) on tiny models."""
import json

import pytest
from click.testing import CliRunner

from dcnviz.bench_model import model as bench_model

import tiny_models


@pytest.fixture
def tiny(monkeypatch):
    tiny_models.register(monkeypatch)


@pytest.mark.parametrize("name", ["tiny_rfcn_dcn", "tiny_deeplab"])
def test_bench_model_json(tiny, name):
    result = CliRunner().invoke(bench_model, ["-m", name, "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["model"] == name and r["input"] == list(tiny_models.SCALES) and len(r["runs_s"]) == 2
    assert r["median_s"] > 0 and (r["rois"] is None) == (name == "tiny_deeplab")
    assert r["cpu_kernels"] in ("avx512", "avx2", "baseline")
    assert r["freed_memory_kept"] is False  # in-process: only the dcnviz command sets it


def test_bench_model_reports_kept_memory(tiny, monkeypatch):
    import dcnviz.memory

    monkeypatch.setattr(dcnviz.memory, "_kept", True)
    text = CliRunner().invoke(bench_model, ["-m", "tiny_deeplab", "--repeats", "1"]).output
    assert "freed memory kept" in text
    out = CliRunner().invoke(bench_model, ["-m", "tiny_deeplab", "--repeats", "1", "--json"]).output
    assert json.loads(out)["freed_memory_kept"] is True


def test_bench_model_text_and_size(tiny):
    result = CliRunner().invoke(bench_model, ["-m", "tiny_rfcn_dcn", "--size", "48x80", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("tiny_rfcn_dcn: ") and "input 48x80" in result.output
    assert "dcnviz CPU kernels " in result.output


@pytest.mark.parametrize("args, match", [
    (["-m", "nope"], "unknown model 'nope'"),
    (["-m", "tiny_deeplab", "--size", "600"], "HEIGHTxWIDTH"),
    (["-m", "tiny_deeplab", "--size", "8x8"], "at least 32"),
    (["nope"], "unknown model 'nope'"),  # the deprecated positional NAME
])
def test_bench_model_bad_arguments(tiny, args, match):
    result = CliRunner().invoke(bench_model, args)
    assert result.exit_code == 2 and match in result.output


def test_bench_model_compare_and_dtype(tiny):
    result = CliRunner().invoke(bench_model, ["-m", "tiny_rfcn_dcn", "--compare", "tiny_deeplab", "--dtype", "bfloat16",
                                              "--size", "48x80", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert (r["model"], r["dtype"]) == ("tiny_rfcn_dcn", "bfloat16")
    assert [(c["model"], c["dtype"]) for c in r["compared"]] == [("tiny_rfcn_dcn", "float32"),
                                                                  ("tiny_deeplab", "bfloat16")]
    assert r["ratios"]["bfloat16/float32"] == r["median_s"] / r["compared"][0]["median_s"]
    assert r["ratios"]["tiny_rfcn_dcn/tiny_deeplab"] == r["median_s"] / r["compared"][1]["median_s"]
    text = CliRunner().invoke(bench_model, ["-m", "tiny_rfcn_dcn", "--compare", "tiny_rfcn_dcn", "--half",
                                            "--size", "48x80", "--repeats", "1"]).output
    assert "ratio bfloat16/float32: " in text and "ratio tiny_rfcn_dcn/tiny_rfcn_dcn: " in text
