"""``dcnviz models``: every registered model with its task, classes, size and where its weights are.

Run as subprocesses: other test modules register test models in this process's registry."""
from __future__ import annotations

import json
import math
import re

import jsonschema
from click.testing import CliRunner

from cli_helpers import run_cli
from dcnviz.cli import main
from dcnviz.convert import names
from dcnviz.io.results_json import load_schema
from dcnviz.models import get_spec

BUNDLED = ["deeplab_dcn_synth", "deeplab_synth", "rfcn_dcn_synth", "rfcn_synth"]
ALL = sorted([*names.official_specs(), *BUNDLED])


def test_json_lists_every_model_and_where_its_weights_are(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "rfcn_dcn_coco.safetensors").write_bytes(b"x" * 1234)
    proc = run_cli(["models", "--json"], cwd=tmp_path, fake=False, env={"DCNVIZ_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    jsonschema.Draft202012Validator(load_schema("models")).validate(report)
    assert report["weights_home"] == str(home)
    models = {m["name"]: m for m in report["models"]}
    assert list(models) == ALL
    for name, m in models.items():
        spec = get_spec(name)
        assert (m["task"], m["dataset"], m["classes"]) == (spec.task, spec.dataset, list(spec.classes))
        assert m["num_classes"] == len(spec.classes)
        if name in BUNDLED:
            assert m["weights"]["kind"] == "bundled" and m["weights"]["official_file"] is None
            assert m["weights"]["path"] == f"{report['bundled_weights_dir']}/{name}.safetensors"
        else:
            # the size comes from building the network; the official key list is an independent count
            assert m["parameters"] == sum(math.prod(s) for s in names.official_specs()[name].values())
            assert m["weights"]["kind"] == "converted" and m["weights"]["official_file"] == f"{name}-0000.params"
            assert m["weights"]["path"] == str(home / f"{name}.safetensors")
            present = name == "rfcn_dcn_coco"
            assert m["weights"]["present"] is present and m["weights"]["bytes"] == (1234 if present else None)


def test_table(tmp_path):
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "rfcn_dcn_synth.safetensors").write_bytes(b"x" * (3 * 2**20))
    proc = run_cli(["models"], cwd=tmp_path, bundled_dir=bundled, env={"DCNVIZ_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "DATASET", "CLASSES", "PARAMS", "WEIGHTS", "FILE"]
    cells = [re.split(r"\s{2,}", line) for line in lines[1:1 + len(ALL)]]  # columns: 2+ spaces apart
    rows = {c[0]: c[1:] for c in cells}
    assert list(rows) == ALL
    assert rows["rfcn_dcn_synth"] == ["detection", "synth", "6", "2.8M", "bundled, 3.0 MiB",
                                      f"{bundled}/rfcn_dcn_synth.safetensors"]
    assert rows["rfcn_synth"][4:] == ["bundled, MISSING", f"{bundled}/rfcn_synth.safetensors"]
    assert rows["rfcn_dcn_coco"] == ["detection", "coco", "81", "63.2M", "official, not converted",
                                     f"{tmp_path}/home/rfcn_dcn_coco.safetensors"]
    assert "dcnviz convert NAME-0000.params" in proc.stdout and "weights/README.md" in proc.stdout


def test_listed_in_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "models" in result.output.split("Commands:")[1]
