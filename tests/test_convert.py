"""Conversion of official-format weight files: strict key checks, .safetensors output with metadata,
``dcnviz convert`` and ``load_model`` on tiny models written in the official key format."""
import hashlib
import json
import os
import pickle
import stat

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from dcnviz.cli import main
from dcnviz.convert import names
from dcnviz.convert.weights import guess_model, read_weights
from dcnviz.models.loading import expected_state_dict
from dcnviz.errors import UserError
from dcnviz.models import load_model

import params_writer
import tiny_models
from random_weights import official_arrays


@pytest.fixture
def tiny(monkeypatch):
    tiny_models.register(monkeypatch)


def write_params(path, arrays, version="v2"):
    params_writer.write(str(path), arrays, version)
    return str(path)


def read(path, model=None):
    """``read_weights`` as ``load_model`` calls it: with the expected state dict of a named model."""
    return read_weights(path, model, expected=None if model is None else expected_state_dict(model))


def run_cli(*args):
    result = CliRunner().invoke(main, ["convert", *map(str, args)])
    return result.exit_code, result.output


@pytest.mark.parametrize("version", ["v2", "legacy", "v1"])
def test_convert_and_load(tiny, tmp_path, version):
    model = tiny_models.rfcn("rfcn_dcn", seed=3)
    src = write_params(tmp_path / "tiny.params", official_arrays(model), version)
    out = tmp_path / "tiny.safetensors"
    code, text = run_cli(src, "--model", "tiny_rfcn_dcn", "-o", out)
    assert code == 0, text
    assert "tiny_rfcn_dcn" in text and str(out) in text and f"{version} x" in text
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "dcnviz" and meta["model"] == "tiny_rfcn_dcn"
    assert json.loads(meta["classes"]) == list(tiny_models.DET_CLASSES)
    assert meta["source_sha256"] == hashlib.sha256(open(src, "rb").read()).hexdigest()
    assert meta["bbox_keys"] == "rfcn_bbox_*" and meta["dcnviz_version"]
    for loaded in (load_model("tiny_rfcn_dcn", weights=str(out), fold_bn=False), load_model(str(out), fold_bn=False),
                   load_model("tiny_rfcn_dcn", weights=src, fold_bn=False)):
        got = loaded.state_dict()
        assert got.keys() == model.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
        assert not loaded.training
    assert sorted(os.listdir(tmp_path)) == ["tiny.params", "tiny.safetensors"]  # no temporary files left


def test_test_keys_replace_the_plain_box_weights(tiny, tmp_path):
    model = tiny_models.rfcn("rfcn_dcn")
    arrays = official_arrays(model, test_keys=True)
    _, state, meta = read(write_params(tmp_path / "t.params", arrays), "tiny_rfcn_dcn")
    np.testing.assert_array_equal(state["head.rfcn_bbox.weight"].numpy(), arrays["arg:rfcn_bbox_weight_test"])
    np.testing.assert_array_equal(state["head.rfcn_bbox.bias"].numpy(), arrays["arg:rfcn_bbox_bias_test"])
    assert meta["bbox_keys"] == "rfcn_bbox_*_test"
    del arrays["arg:rfcn_bbox_weight"], arrays["arg:rfcn_bbox_bias"]  # only the _test keys: also fine
    _, state, _ = read(write_params(tmp_path / "t2.params", arrays), "tiny_rfcn_dcn")
    np.testing.assert_array_equal(state["head.rfcn_bbox.bias"].numpy(), arrays["arg:rfcn_bbox_bias_test"])


def test_float16_and_float64_arrays_become_float32(tiny, tmp_path):
    arrays = official_arrays(tiny_models.deeplab(True))
    arrays["arg:fc6_weight"] = arrays["arg:fc6_weight"].astype(np.float16)
    arrays["aux:bn_conv1_moving_var"] = arrays["aux:bn_conv1_moving_var"].astype(np.float64)
    _, state, meta = read(write_params(tmp_path / "d.params", arrays), "tiny_deeplab")
    assert all(t.dtype == torch.float32 for t in state.values())
    np.testing.assert_array_equal(state["head.fc6.weight"].numpy(), arrays["arg:fc6_weight"].astype(np.float32))
    assert "float16 x1" in meta["source_dtypes"] and "float64 x1" in meta["source_dtypes"]


def test_mismatched_keys_are_listed_in_one_message(tiny, tmp_path):
    arrays = official_arrays(tiny_models.rfcn("rfcn_dcn"))
    del arrays["arg:res5a_branch2b_offset_bias"]
    arrays["arg:fc7_weight"] = np.zeros(3, np.float32)
    arrays["arg:conv1_weight"] = np.zeros((1, 3, 7, 7), np.float32)
    code, text = run_cli(write_params(tmp_path / "bad.params", arrays), "-m", "tiny_rfcn_dcn", "-o",
                         tmp_path / "o.safetensors")
    assert code == 1 and text.count("\n") == 1 and text.startswith("Error: ")
    assert "1 missing (arg:res5a_branch2b_offset_bias)" in text
    assert "1 unexpected (arg:fc7_weight)" in text
    assert "1 with the wrong shape (arg:conv1_weight: file (1, 3, 7, 7), model (8, 3, 7, 7))" in text
    assert not (tmp_path / "o.safetensors").exists()


def test_file_of_another_model(tiny, tmp_path):
    src = write_params(tmp_path / "seg.params", official_arrays(tiny_models.deeplab(True)))
    with pytest.raises(UserError, match="does not fit model tiny_rfcn_dcn: .* missing .*arg:rpn_"):
        read(src, "tiny_rfcn_dcn")
    with pytest.raises(UserError, match="matches none of the official models"):
        read(src)  # no model given: only official models are recognised from keys
    out = tmp_path / "seg.safetensors"
    code, text = run_cli(src, "-m", "tiny_rfcn_dcn", "-o", out)
    assert code == 1 and text.count("\n") == 1 and "does not fit model tiny_rfcn_dcn: " in text
    assert not out.exists()
    assert run_cli(src, "-m", "tiny_deeplab", "-o", out)[0] == 0
    code, text = run_cli(out, "-o", tmp_path / "again.safetensors")
    assert code == 1 and text.count("\n") == 1 and "is a .safetensors file, not an MXNet .params file" in text
    with pytest.raises(UserError, match="holds weights of model tiny_deeplab, not tiny_rfcn_dcn"):
        load_model("tiny_rfcn_dcn", weights=str(out))


def test_integer_arrays_are_refused(tiny, tmp_path):
    arrays = official_arrays(tiny_models.deeplab(True))
    arrays["arg:score_bias"] = arrays["arg:score_bias"].astype(np.int32)
    with pytest.raises(UserError, match="non-float arrays cannot be weights: arg:score_bias"):
        read(write_params(tmp_path / "i.params", arrays), "tiny_deeplab")


def test_never_overwrites_without_force(tiny, tmp_path):
    src = write_params(tmp_path / "d.params", official_arrays(tiny_models.deeplab(True)))
    out = tmp_path / "d.safetensors"
    out.write_bytes(b"keep me")
    code, text = run_cli(src, "-m", "tiny_deeplab", "-o", out)
    assert code == 1 and "already exists" in text and "--force" in text
    assert out.read_bytes() == b"keep me"
    assert run_cli(src, "-m", "tiny_deeplab", "-o", out, "--force")[0] == 0
    assert load_model(str(out)).classes == tiny_models.SEG_CLASSES
    assert sorted(os.listdir(tmp_path)) == ["d.params", "d.safetensors"]


def test_output_gets_the_usual_file_mode(tiny, tmp_path):
    src = write_params(tmp_path / "d.params", official_arrays(tiny_models.deeplab(True)))
    assert run_cli(src, "-m", "tiny_deeplab", "-o", tmp_path / "d.safetensors")[0] == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "d.safetensors").stat().st_mode) == 0o666 & ~mask


def test_default_output_is_where_load_model_looks(tiny, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DCNVIZ_HOME", str(home))
    src = write_params(tmp_path / "d.params", official_arrays(tiny_models.deeplab(True, seed=5)))
    code, text = run_cli(src, "-m", "tiny_deeplab")
    assert code == 0, text
    assert (home / "tiny_deeplab.safetensors").is_file()
    assert torch.equal(load_model("tiny_deeplab").head.score.bias, tiny_models.deeplab(True, seed=5).head.score.bias)


def test_default_output_folder_that_cannot_be_made(tiny, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("DCNVIZ_HOME", str(tmp_path / "file" / "home"))
    src = write_params(tmp_path / "d.params", official_arrays(tiny_models.deeplab(True)))
    code, text = run_cli(src, "-m", "tiny_deeplab")
    assert code == 1 and text.count("\n") == 1
    assert f"cannot create the weights folder {tmp_path}/file/home ($DCNVIZ_HOME): Not a directory" in text


@pytest.mark.parametrize("content, match", [
    (pickle.dumps({"state_dict": {"w": 1}}), "pickle"),
    (np.random.RandomState(0).bytes(3000), "not an MXNet .params file"),
    (b"", "not an MXNet .params file"),
])
def test_foreign_files_give_one_line(tmp_path, content, match):
    src = tmp_path / "x.params"
    src.write_bytes(content)
    code, text = run_cli(src, "-o", tmp_path / "o.safetensors")
    assert code == 1 and text.count("\n") == 1 and match in text


def test_truncated_file_gives_one_line(tiny, tmp_path):
    data = params_writer.encode(official_arrays(tiny_models.deeplab(True)))
    src = tmp_path / "cut.params"
    src.write_bytes(data[: len(data) // 2])
    code, text = run_cli(src, "-m", "tiny_deeplab", "-o", tmp_path / "o.safetensors")
    assert code == 1 and text.count("\n") == 1 and "truncated" in text


def test_bad_cli_arguments(tiny, tmp_path):
    src = write_params(tmp_path / "d.params", official_arrays(tiny_models.deeplab(True)))
    code, text = run_cli(src, "-m", "tiny_deeplb")  # a usage error, like detect's --model
    assert code == 2 and "unknown model 'tiny_deeplb'; did you mean tiny_deeplab" in text
    code, text = run_cli(src, "-m", "tiny_deeplab", "-o", tmp_path / "missing" / "o.safetensors")
    assert code == 1 and "does not exist" in text
    code, text = run_cli(tmp_path / "nope.params")
    assert code == 1 and "no such file" in text


def test_load_model_refuses_broken_safetensors(tiny, tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(np.random.RandomState(1).bytes(500))
    with pytest.raises(UserError, match="neither an MXNet .params file nor a readable .safetensors file"):
        load_model("tiny_deeplab", weights=str(path))
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UserError, match="pickle"):
        load_model("tiny_deeplab", weights=str(path))


@pytest.mark.parametrize("model", sorted(names.official_specs()))
def test_official_models_are_recognised_from_keys_and_shapes(model):
    found = dict(names.official_specs()[model])
    assert guess_model(found) == model
    found.update(names.official_optional()[model])
    assert guess_model(found) == model
    found["arg:extra_weight"] = (1,)
    assert guess_model(found) is None
