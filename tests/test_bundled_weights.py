"""The shipped weights: evaluated on the held-out split exactly as ``weights/README.md`` says, they give
the numbers of its table (to the 4 decimals printed there)."""
import re
from pathlib import Path

import pytest

from dcnviz.data.synth import generate
from dcnviz.eval.evaluate import evaluate
from dcnviz.models import load_model
from torch_threads import threads

README = Path(__file__).resolve().parents[1] / "weights" / "README.md"
ROW = re.compile(r"^\| `(\w+_synth)` \| ([0-9.]+|–) \| ([0-9.]+|–) \| ([0-9.]+|–) \|$")


def readme_scores() -> dict[str, dict[str, float]]:
    """The "bundled files" table: model -> {"mAP50", "mAP70", "mIoU"} (dashes left out)."""
    scores = {}
    for line in README.read_text().splitlines():
        m = ROW.match(line)
        if m:
            values = dict(zip(("mAP50", "mAP70", "mIoU"), m.groups()[1:]))
            scores[m.group(1)] = {k: float(v) for k, v in values.items() if v != "–"}
    return scores


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, 400, seed=999, split="test")  # the README's held-out split
    return str(root)


def test_the_readme_lists_all_four_models():
    assert set(readme_scores()) == {"rfcn_dcn_synth", "rfcn_synth", "deeplab_dcn_synth", "deeplab_synth"}


@pytest.mark.parametrize("name", ["rfcn_dcn_synth", "rfcn_synth", "deeplab_dcn_synth", "deeplab_synth"])
def test_eval_reproduces_the_readme(name, test_split):
    with threads(2):
        result = evaluate(load_model(name), test_split, "test")
    expected = readme_scores()[name]
    assert expected
    for key, value in expected.items():
        assert round(result[key], 4) == pytest.approx(value, abs=1e-9), key
