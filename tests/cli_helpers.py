"""Running the CLI in a subprocess and checking what reached the user."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
FAKE_CLI = Path(__file__).resolve().with_name("fake_models.py")


# ``python -c`` program: the real CLI with dcnviz's bundled-weights folder replaced by argv[1]
_OTHER_BUNDLED_DIR = ("import sys; import dcnviz.models.loading as loading; folder = sys.argv.pop(1); "
                      "loading.bundled_weights_dir = lambda: folder; from dcnviz.cli import main; "
                      "main(sys.argv[1:], prog_name='dcnviz')")


def run_cli(args, cwd: Path, fake: bool = True, env: dict | None = None,
            bundled_dir: Path | None = None) -> subprocess.CompletedProcess:
    """``dcnviz ARGS`` in ``cwd`` as a subprocess: through ``tests/fake_models.py`` (fake models
    registered, ``dcnviz.load_model`` replaced) or, with ``fake=False``, ``python -m dcnviz``; with
    ``bundled_dir`` (implies the real CLI), the bundled weights are looked for in that folder instead."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if bundled_dir is not None:
        entry = ["-c", _OTHER_BUNDLED_DIR, str(bundled_dir)]
    else:
        entry = [str(FAKE_CLI)] if fake else ["-m", "dcnviz"]
    return subprocess.run([sys.executable, *entry, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The run failed with ``code``, without a traceback, and its stderr ends in one ``Error:`` line
    holding every fragment; returns that line."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def leftover_temp_files(folder: Path) -> list[Path]:
    """Temporary files of the atomic writers (".<name>.<random>.tmp") anywhere below ``folder``."""
    return [p for p in folder.rglob(".*.tmp")]


def validate_jsonl(text: str, schema_name: str) -> list[dict]:
    """Parse JSON Lines and validate every object against ``dcnviz/schemas/<name>.schema.json``."""
    from dcnviz.io.results_json import load_schema

    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        validator.validate(record)
    return records


def coco_ground_truth(records: list[dict], categories):
    """A pycocotools ``COCO`` object that knows only the images of ``records`` (detection records) and
    the category ids ``categories``: enough to load a results file into with ``loadRes``."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {"images": [{"id": r["image_id"], "width": r["width"], "height": r["height"]} for r in records],
                  "annotations": [], "categories": [{"id": c, "name": str(c)} for c in categories]}
    gt.createIndex()
    return gt


def svg_markers(svg: str | bytes, prefix: str) -> int:
    """The markers matplotlib drew in the SVG groups whose id starts with ``prefix`` (dcnviz.viz.vector.GID):
    a ``<use>`` each, or, for a few markers, a clipped ``<path>`` each (the path in ``<defs>`` is not one)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(svg)
    groups = [g for g in root.iter() if g.tag.endswith("}g") and g.get("id", "").startswith(prefix)]
    return sum(1 for g in groups for e in g.iter()
               if e.tag.endswith("}use") or (e.tag.endswith("}path") and e.get("clip-path")))
