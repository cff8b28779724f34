"""``dcnviz explore``: the page, driven in headless Chromium (Debian's ``chromium`` through Playwright's Python
API; nothing downloads a browser). The drawn points (the DOM contract: ``.dcnviz-point[data-x][data-y]``)
are compared with ``dcnviz offsets --at X,Y`` and with :func:`dcnviz.analysis.sampling_locations` on the
offsets embedded in the page; the command's own behaviour (output paths, errors) is tested without a browser.

Models: the bundled ``rfcn_dcn_synth`` / ``deeplab_dcn_synth`` (trained: real detections and segments),
their random-weight versions, and a tiny 4-group R-FCN (``tests/tiny_models.py``) for the group selector."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import tiny_models
from analysis_models import write_weights
from cli_helpers import ROOT, assert_one_line_error
from dcnviz.analysis import LayerGeometry, sampling_locations
from dcnviz.analysis.dilation import effective_dilation
from dcnviz.cli import main

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the test extra installs it; without it only the browser tests are skipped
    sync_playwright = None

CHROMIUM = shutil.which("chromium")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None,
    reason="needs Debian's chromium (apt-get install chromium) and the playwright package (pip install playwright)")

STARS = ROOT / "samples" / "synth_stars.jpg"   # 500x375: the synth models run it at scale 0.8, 20 px a cell
MIXED = ROOT / "samples" / "synth_mixed.jpg"
RINGS = ROOT / "samples" / "synth_rings.jpg"
RES5 = ["res5c", "res5b", "res5a"]


def cli(args, cwd):
    """``dcnviz ARGS --device cpu`` in ``cwd``, in this process."""
    args = [str(a) for a in [*args, "--device", "cpu"]]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        result = CliRunner().invoke(main, args, prog_name="dcnviz")
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def explore(tmp, *args) -> Path:
    """Run ``dcnviz explore ARGS -o tmp/page.html``; the page's path."""
    page = Path(tmp) / "page.html"
    proc = cli(["explore", *args, "-o", page], tmp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(page)
    return page


def embedded(page: Path) -> dict:
    """The data block of a page (offset maps still base64)."""
    text = re.search(r'<script type="application/json" id="dcnviz-data">(.*?)</script>', page.read_text(), re.S)
    return json.loads(text.group(1))


def offsets_of(data: dict) -> dict[str, np.ndarray]:
    """Each layer's embedded offset map (2*G*9, Ho, Wo) float32, by name."""
    import base64

    return {layer["name"]: np.frombuffer(base64.b64decode(layer["offsets"]), "<f4").reshape(-1, *layer["map"])
            for layer in data["layers"]}


def expected(data: dict, cell, names, group, nearest=False):
    """Python's sampling points of a unit, (x, y) image pixels, on the page's own offsets; and their valid flags."""
    maps = offsets_of(data)
    layers = {layer["name"]: layer for layer in data["layers"]}
    geoms = [LayerGeometry(3, 2, 2, 1, layers[n]["groups"]) for n in names]
    found = sampling_locations([maps[n] for n in names], tuple(cell), geoms, group=group, round=nearest)
    return found.image_xy(data["image"]["scale"], 16), found.valid


# ------------------------------------------------------------------------------------------------ the page

@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or sync_playwright is None:
        pytest.skip("needs Debian's chromium and the playwright package")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


class Page:
    """One loaded page: hover, click and read the DOM contract in image pixels."""

    def __init__(self, browser, path: Path, size=(1280, 800)):
        self.page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_function("document.body.dataset.ready === '1'", timeout=20000)

    def client(self, x, y, view="#dcnviz-view"):
        """Screen position of image position (x, y)."""
        return self.page.evaluate("([sel, x, y]) => { const m = document.querySelector(sel).getScreenCTM();"
                                  " return [m.a * x + m.e, m.d * y + m.f]; }", [view, float(x), float(y)])

    def hover(self, x, y):
        self.page.mouse.move(*self.client(x, y))

    def click(self, x, y):
        self.page.mouse.click(*self.client(x, y))

    def points(self, cls="dcnviz-point"):
        """Drawn points as (group, index, x, y, valid) rows in point order."""
        rows = self.page.eval_on_selector_all(
            f".{cls}", "els => els.map(e => [e.dataset.group, +e.dataset.index, +e.dataset.x, +e.dataset.y,"
                       " e.dataset.valid === '1'])")
        return sorted(rows, key=lambda r: (r[0], r[1]))

    def xy(self, cls="dcnviz-point"):
        return np.array([r[2:4] for r in self.points(cls)]).reshape(-1, 2)

    def unit(self, cls="dcnviz-unit"):
        return tuple(self.page.eval_on_selector(f".{cls}", "e => [+e.dataset.x, +e.dataset.y]"))

    def select(self, control, value):
        self.page.select_option(f"#dcnviz-{control}", str(value))

    def close(self):
        assert not self.errors, self.errors
        self.page.close()


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    """The bundled rfcn_dcn_synth on synth_stars.jpg, detections >= 0.3, with its plain twin; and
    ``dcnviz offsets --at`` for three units (group 0: the model has one)."""
    tmp = tmp_path_factory.mktemp("stars")
    page = explore(tmp, STARS, "--conf", "0.3", "--plain-model", "rfcn_synth")
    at = [(250.0, 170.0), (30.0, 30.0), (470.0, 350.0)]  # cell centres (20 px cells): middle, two corners
    proc = cli(["offsets", STARS, "--group", "0", "-o", tmp / "offsets", *sum((["--at", f"{x},{y}"] for x, y in at), [])],
               tmp)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp / "offsets" / "synth_stars_res5c.json").read_text())
    proc = cli(["rois", STARS, "--conf", "0.3", "--top", "100", "-o", tmp / "rois"], tmp)
    assert proc.returncode == 0, proc.stderr
    rois = json.loads((tmp / "rois" / "synth_stars.json").read_text())
    return SimpleNamespace(path=page, data=embedded(page), offsets=record, at=at, rois=rois)


@needs_browser
class TestPage:
    def test_hovered_points_equal_the_offsets_command(self, browser, stars):
        page = Page(browser, stars.path)
        assert page.points() == []  # nothing until the mouse is over the image
        hollow = 0
        for (x, y), unit in zip(stars.at, stars.offsets["units"]):
            page.hover(x, y)
            assert page.unit() == pytest.approx(tuple(unit["xy"]), abs=1e-9)
            rows = page.points()
            assert len(rows) == 729 and {r[0] for r in rows} == {"0"}
            drawn = np.array([r[2:4] for r in rows])
            assert np.abs(drawn - np.asarray(unit["points"])).max() <= 0.5
            # the same arithmetic, in fact: equal up to the JSON's rounding to 1/100 px
            np.testing.assert_allclose(drawn, unit["points"], atol=0.005 + 1e-9)
            assert [r[4] for r in rows] == unit["valid"]
            hollow += page.page.locator(".dcnviz-point.dcnviz-hollow").count()
            assert page.page.locator(".dcnviz-point.dcnviz-hollow").count() == unit["valid"].count(False)
        assert hollow > 0  # the corner units sample off the maps: hollow points were drawn and checked
        page.close()

    def test_arrow_keys_move_the_unit_one_cell(self, browser, stars):
        page = Page(browser, stars.path)
        page.hover(250, 170)  # cell (8, 12)
        for key, cell in [("ArrowRight", (8, 13)), ("ArrowDown", (9, 13)), ("ArrowLeft", (9, 12)),
                          ("ArrowUp", (8, 12)), ("ArrowUp", (7, 12))]:
            page.page.keyboard.press(key)
            assert page.unit() == ((cell[1] + 0.5) * 20, (cell[0] + 0.5) * 20)
            xy, _ = expected(stars.data, cell, RES5, 0)
            np.testing.assert_allclose(page.xy(), xy, atol=1e-6)
        page.hover(30, 30)  # the keys pinned the unit: the mouse no longer moves it
        assert page.unit() == (250.0, 150.0)
        page.page.keyboard.press("Escape")
        page.hover(30, 30)
        assert page.unit() == (30.0, 30.0)
        page.close()

    def test_click_pins_the_unit_and_shows_the_parts_of_the_detection_under_it(self, browser, stars):
        page = Page(browser, stars.path)
        dets = stars.data["detections"]
        boxes = page.page.eval_on_selector_all(".dcnviz-detection", "els => els.map(e => +e.dataset.index)")
        assert boxes == list(range(len(dets))) and len(dets) >= 2
        assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
        # the same detections and parts as `dcnviz rois --top`
        # the JSON rounds probabilities to 4 decimals and pixels to 1/100
        assert [round(d["score"], 4) for d in dets] == [r["detection_score"] for r in stars.rois["rois"]]
        for d, r in zip(dets, stars.rois["rois"]):
            np.testing.assert_allclose(d["parts"]["bins"], r["parts"], atol=0.005 + 1e-9)
            np.testing.assert_allclose(d["parts"]["roi"], r["roi"], atol=0.005 + 1e-9)
        assert page.page.locator(".dcnviz-part").count() == 0
        # a point inside detection k and in no smaller box: its parts appear, 7x7 of them
        areas = [(d["box"][2] - d["box"][0] + 1) * (d["box"][3] - d["box"][1] + 1) for d in dets]
        clicked = []
        for k in np.argsort(areas):
            x1, y1, x2, y2 = dets[k]["box"]
            inner = [j for j in range(len(dets)) if areas[j] < areas[k]]
            # cell centres (20 px cells) 2 px or more inside the box and outside every smaller box: a click
            # there is in that cell and that box however the mouse position is rounded to screen pixels
            grid = [(x, y) for x in np.arange(10, 500, 20) for y in np.arange(10, 375, 20)
                    if x1 + 2 <= x < x2 - 1 and y1 + 2 <= y < y2 - 1]
            free = [(x, y) for x, y in grid if not any(
                dets[j]["box"][0] - 2 <= x < dets[j]["box"][2] + 3 and dets[j]["box"][1] - 2 <= y < dets[j]["box"][3] + 3
                for j in inner)]
            if not free:
                continue
            page.click(*free[0])
            clicked.append(k)
            assert page.page.locator(".dcnviz-part").count() == 49
            assert page.page.eval_on_selector(".dcnviz-roi", "e => +e.dataset.index") == k
            parts = page.page.eval_on_selector_all(
                ".dcnviz-part", "els => els.map(e => [+e.dataset.x1, +e.dataset.y1, +e.dataset.x2, +e.dataset.y2])")
            np.testing.assert_allclose(parts, np.reshape(dets[k]["parts"]["bins"], (49, 4)))
            assert "pinned" in page.page.inner_text("#dcnviz-readout")
            page.hover(5, 5)  # pinned: the unit stays where it was clicked
            cell = (int(free[0][1] * 0.8 // 16), int(free[0][0] * 0.8 // 16))
            assert page.unit() == ((cell[1] + 0.5) * 20, (cell[0] + 0.5) * 20)
        assert len(clicked) >= 2
        page.click(2, 2)  # outside every box (the random corner is free on this image): parts gone
        assert page.page.locator(".dcnviz-part").count() == 0
        page.close()

    def test_layer_and_levels_selectors(self, browser, stars):
        page = Page(browser, stars.path)
        page.hover(250, 170)
        page.select("layer", 1)  # res5b: 2 levels below it at most
        assert page.page.eval_on_selector_all("#dcnviz-levels option", "els => els.map(e => e.value)") == ["1", "2"]
        xy, _ = expected(stars.data, (8, 12), ["res5b", "res5a"], 0)
        np.testing.assert_allclose(page.xy(), xy, atol=1e-6)
        page.select("levels", 1)
        xy, _ = expected(stars.data, (8, 12), ["res5b"], 0)
        np.testing.assert_allclose(page.xy(), xy, atol=1e-6)
        assert len(xy) == 9
        page.select("layer", 2)
        page.select("levels", 2)
        xy, _ = expected(stars.data, (8, 12), ["res5c", "res5b"], 0)
        np.testing.assert_allclose(page.xy(), xy, atol=1e-6)
        page.page.check("#dcnviz-round")  # the official nearest-cell reading
        xy, _ = expected(stars.data, (8, 12), ["res5c", "res5b"], 0, nearest=True)
        np.testing.assert_allclose(page.xy(), xy, atol=1e-6)
        page.close()

    def test_plain_twin_beside_and_effective_dilation(self, browser, stars):
        page = Page(browser, stars.path)
        page.hover(250, 170)
        # three 3x3 convs of dilation 2 from cell (8, 12): cells 8 + 2*(a0 + a1 + a2) - 6, 20 px a cell
        grid = [((12 + 2 * (b0 + b1 + b2) - 6 + 0.5) * 20, (8 + 2 * (a0 + a1 + a2) - 6 + 0.5) * 20)
                for a0 in range(3) for b0 in range(3) for a1 in range(3) for b1 in range(3)
                for a2 in range(3) for b2 in range(3)]
        np.testing.assert_array_equal(page.xy("dcnviz-plain-point"), grid)
        assert page.unit("dcnviz-plain-unit") == (250.0, 170.0)
        shown = float(page.page.eval_on_selector("#dcnviz-dilation", "e => e.dataset.value"))
        assert shown == pytest.approx(effective_dilation(offsets_of(stars.data)["res5c"])[0, 8, 12], abs=1e-9)
        page.close()

    def test_screenshot_is_not_blank(self, browser, stars, tmp_path):
        page = Page(browser, stars.path)
        page.hover(250, 170)
        shot = cv2.imdecode(np.frombuffer(page.page.locator("#dcnviz-view").screenshot(), np.uint8), cv2.IMREAD_COLOR)
        cv2.imwrite(str(tmp_path / "explore.png"), shot)
        assert shot.std() > 20  # the image is there
        red = (shot[..., 2] > 200) & (shot[..., 1] < 60) & (shot[..., 0] < 60)
        green = (shot[..., 1] > 200) & (shot[..., 2] < 60) & (shot[..., 0] < 60)
        assert red.sum() > 500 and green.sum() > 30  # the points and the unit are drawn
        page.close()


@pytest.fixture(scope="module")
def tiny_page(tmp_path_factory):
    """A tiny R-FCN with 4 deformable groups and random weights: every detection shown (--conf 0)."""
    tmp = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        tiny_models.register(mp)
        weights = write_weights("tiny_rfcn_dcn", tmp / "tiny.safetensors")
        return explore(tmp, MIXED, "--model", "tiny_rfcn_dcn", "--weights", weights, "--conf", "0")


@needs_browser
def test_group_selector_on_a_four_group_model(browser, tiny_page):
    data = embedded(tiny_page)
    assert [layer["groups"] for layer in data["layers"]] == [4, 4] and data["layers"][1]["map"] == [4, 6]
    page = Page(browser, tiny_page)
    scale = data["image"]["scale"]
    x, y = (3 + 0.5) * 16 / scale, (2 + 0.5) * 16 / scale  # centre of cell (2, 3)
    page.hover(x, y)
    assert page.page.eval_on_selector_all("#dcnviz-group option", "els => els.map(e => e.value)") == [
        "0", "1", "2", "3", "mean", "all"]
    for group in [0, 1, 2, 3, "mean", "all"]:
        page.select("group", group)
        xy, valid = expected(data, (2, 3), ["res5b", "res5a"], group)
        rows = page.points()
        np.testing.assert_allclose(page.xy(), np.reshape(xy, (-1, 2)), atol=1e-6)
        assert [r[4] for r in rows] == np.ravel(valid).tolist()
        if group == "all":
            assert [r[0] for r in rows] == [str(g) for g in range(4) for _ in range(81)]
        offsets = offsets_of(data)["res5b"]
        dil = effective_dilation(offsets, 3, 2, 4)[:, 2, 3]
        if group == "mean":
            mean = offsets.reshape(4, 18, 4, 6).astype(np.float64).mean(axis=0)
            dil = effective_dilation(mean, 3, 2, 1)[:, 2, 3]
        want = dil.mean() if group in ("all", "mean") else dil[group]
        assert float(page.page.eval_on_selector("#dcnviz-dilation", "e => e.dataset.value")) == pytest.approx(want)
    # every detection of the random model is there, and each one's parts when clicked in the list
    assert page.page.locator(".dcnviz-detection").count() == len(data["detections"]) > 0
    page.page.locator('.dcnviz-detection-item[data-index="0"]').click()
    assert page.page.locator(".dcnviz-part").count() == 49
    page.close()


@pytest.fixture(scope="module")
def random_synth(tmp_path_factory):
    return write_weights("rfcn_dcn_synth", tmp_path_factory.mktemp("w") / "rfcn_dcn_synth-random.safetensors")


@needs_browser
def test_grayscale_image_without_detections(browser, random_synth, tmp_path):
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.cvtColor(cv2.imread(str(MIXED)), cv2.COLOR_BGR2GRAY))
    path = explore(tmp_path, gray, "--weights", random_synth, "--conf", "0.99")
    data = embedded(path)
    assert data["detections"] == [] and (data["image"]["width"], data["image"]["height"]) == (500, 375)
    page = Page(browser, path)
    assert page.page.locator(".dcnviz-detection").count() == 0
    assert "Detections (0)" in page.page.inner_text("aside")
    page.click(110, 255)  # a click with no detection anywhere pins the unit, nothing else
    xy, _ = expected(data, (12, 5), RES5, 0)
    np.testing.assert_allclose(page.xy(), xy, atol=1e-6)
    assert page.page.locator(".dcnviz-part").count() == 0
    page.close()


@needs_browser
def test_large_image_is_shown_scaled_in_original_pixels(browser, tmp_path):
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(STARS)), (4000, 3000), interpolation=cv2.INTER_LINEAR))
    path = explore(tmp_path, big)
    data = embedded(path)
    assert (data["image"]["width"], data["image"]["height"], data["image"]["scale"]) == (4000, 3000, 0.1)
    page = Page(browser, path)
    shown = page.page.locator("#dcnviz-view").bounding_box()
    assert shown["width"] < 1300 and shown["height"] < 1000  # scaled to the window
    for cell in [(9, 12), (0, 0), (18, 24)]:  # 160 px cells
        x, y = (cell[1] + 0.5) * 160, (cell[0] + 0.5) * 160
        page.hover(x, y)
        assert page.unit() == (x, y)
        xy, _ = expected(data, cell, RES5, 0)
        np.testing.assert_allclose(page.xy(), xy, atol=1e-6)
    assert page.xy()[:, 0].max() > 3000  # original pixels, not screen pixels
    page.close()


@needs_browser
def test_segmentation_overlay_toggles(browser, tmp_path):
    path = explore(tmp_path, RINGS, "--model", "deeplab_dcn_synth")
    data = embedded(path)
    assert data["segmentation"]["classes"] and data["detections"] == []
    page = Page(browser, path)
    overlay = page.page.locator(".dcnviz-overlay")
    assert overlay.is_visible()
    page.page.uncheck("#dcnviz-show-prediction")
    assert not overlay.is_visible()
    page.hover(250, 170)
    assert len(page.points()) == 729
    xy, _ = expected(data, (8, 12), RES5, 0)
    np.testing.assert_allclose(page.xy(), xy, atol=1e-6)
    page.close()


CUSTOM = ROOT / "tests" / "custom_models.py"


@needs_browser
def test_own_model_through_model_file_function(browser, tmp_path):
    """--model FILE.py:FUNCTION: two torchvision (DCNv2-rule, modulated) layers on one map, stride 4, composed
    in the page as `dcnviz offsets --model` composes them; a strided DCNv1 layer with 2 groups alone."""
    path = explore(tmp_path, RINGS, "--model", f"{CUSTOM}:modulated")
    data = embedded(path)
    assert [(l["name"], l["boundary"], l["feature_stride"]) for l in data["layers"]] == [
        ("dcns.0", "dcnv2", 4.0), ("dcns.1", "dcnv2", 4.0)]
    assert data["task"] is None and data["detections"] == [] and data["segmentation"] is None
    at = [(250.0, 182.0), (2.0, 2.0)]  # cell centres (4 px cells); a corner: taps off the map, hollow by DCNv2
    proc = cli(["offsets", RINGS, "--model", f"{CUSTOM}:modulated", "--group", "0", "-o", tmp_path / "off",
                *sum((["--at", f"{x},{y}"] for x, y in at), [])], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "off" / "synth_rings_dcns_1.json").read_text())
    page = Page(browser, path)
    assert not page.page.locator("#dcnviz-show-prediction").is_visible()  # nothing to toggle
    assert page.page.eval_on_selector_all("#dcnviz-levels option", "els => els.map(e => e.value)") == ["1", "2"]
    hollow = 0
    for (x, y), unit in zip(at, record["units"]):
        page.hover(x, y)
        assert page.unit() == pytest.approx(tuple(unit["xy"]), abs=1e-9)
        rows = page.points()
        assert len(rows) == 81
        np.testing.assert_allclose([r[2:4] for r in rows], unit["points"], atol=0.005 + 1e-9)
        assert [r[4] for r in rows] == unit["valid"]
        hollow += unit["valid"].count(False)
    assert hollow > 0
    page.close()

    (tmp_path / "v1").mkdir()
    path = explore(tmp_path / "v1", RINGS, "--model", f"{CUSTOM}:dcnv1")
    data = embedded(path)
    (layer,) = data["layers"]
    assert layer["stride"] == [2, 2] and layer["input_size"] == [188, 250] and layer["groups"] == 2
    proc = cli(["offsets", RINGS, "--model", f"{CUSTOM}:dcnv1", "--group", "1", "--at", "102,62", "-o",
                tmp_path / "off1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (unit,) = json.loads((tmp_path / "off1" / "synth_rings_dcn.json").read_text())["units"]
    page = Page(browser, path)
    page.hover(102, 62)  # the centre of cell (15, 25): 4 px cells
    page.select("group", 1)
    rows = page.points()
    assert page.unit() == pytest.approx(tuple(unit["xy"]), abs=1e-9) and len(rows) == 9
    np.testing.assert_allclose([r[2:4] for r in rows], unit["points"], atol=0.005 + 1e-9)
    page.close()


@needs_browser
def test_effective_weights_shade_the_chosen_units(browser, tmp_path):
    """--effective-at: the checkbox draws the unit's effective sampling locations with data-weight equal to
    `dcnviz effective --at`'s JSON weights (every layer, every group); other units keep their plain points."""
    at = (250.0, 170.0)
    path = explore(tmp_path, STARS, "--effective-at", f"{at[0]},{at[1]}", "--conf", "0.3")
    proc = cli(["effective", STARS, "--at", f"{at[0]},{at[1]}", "-o", tmp_path / "eff", "--cell", "64"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (node,) = json.loads((tmp_path / "eff" / "synth_stars_res5c.json").read_text())["nodes"]
    page = Page(browser, path)
    page.hover(*at)
    assert len(page.points()) == 729 and page.page.locator("[data-weight]").count() == 0  # not shaded yet
    page.page.locator(".dcnviz-effective-item").first.click()  # pins the unit and ticks the checkbox
    assert page.page.is_checked("#dcnviz-effective") and page.unit() == tuple(node["xy"])
    rows = page.page.eval_on_selector_all(
        ".dcnviz-point", "els => els.map(e => [e.dataset.layer, +e.dataset.index, +e.dataset.weight, +e.dataset.x,"
                         " +e.dataset.y])")
    assert len(rows) == sum(len(l["weight"]) for l in node["layers"]) > 9
    layers = {l["name"]: l for l in node["layers"]}
    assert {r[0] for r in rows} == set(layers) == set(RES5)
    for name, m, weight, x, y in rows:
        assert weight == pytest.approx(layers[name]["weight"][m], rel=1e-6, abs=1e-12)
        assert (x, y) == pytest.approx(tuple(layers[name]["xy"][m]), abs=1e-6)
    page.hover(30, 30)  # pinned: still the shaded unit
    assert page.page.locator("[data-weight]").count() == len(rows)
    page.page.keyboard.press("ArrowRight")  # another unit: its plain points, and a note
    assert len(page.points()) == 729 and page.page.locator("[data-weight]").count() == 0
    assert "no effective weights at this unit" in page.page.inner_text("#dcnviz-readout")
    page.page.uncheck("#dcnviz-effective")
    page.page.keyboard.press("ArrowLeft")
    assert len(page.points()) == 729 and page.page.locator("[data-weight]").count() == 0
    page.close()


# ------------------------------------------------------------------------------------------------ the command

def test_default_output_is_a_fresh_run_folder_and_open(tmp_path, random_synth, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url))
    first = cli(["explore", MIXED, "--weights", random_synth, "--open", "-q"], tmp_path)
    second = cli(["explore", MIXED, "--weights", random_synth, "-q"], tmp_path)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.stdout == "runs/explore/synth_mixed.html\n" and second.stdout == "runs/explore2/synth_mixed.html\n"
    assert first.stderr == "" and opened == [(tmp_path / "runs/explore/synth_mixed.html").resolve().as_uri()]
    text = (tmp_path / "runs/explore/synth_mixed.html").read_text()
    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)="(?!data:)|https?://(?!www\.w3\.org/2000/svg)', text)


def test_output_file_is_never_overwritten_without_exist_ok(tmp_path, random_synth):
    out = tmp_path / "page.html"
    out.write_text("mine")
    proc = cli(["explore", MIXED, "--weights", random_synth, "--output-file", out], tmp_path)
    assert_one_line_error(proc, 1, "page.html' exists", "--exist-ok")
    assert out.read_text() == "mine"
    proc = cli(["explore", MIXED, "--weights", random_synth, "--output-file", out, "--exist-ok"], tmp_path)
    assert proc.returncode == 0 and out.read_text().startswith("<!DOCTYPE html>")
    image = tmp_path / "copy.jpg"
    image.write_bytes(MIXED.read_bytes())
    assert_one_line_error(cli(["explore", image, "--output-file", image, "--exist-ok"], tmp_path), 1,
                          "is the input image")
    (tmp_path / "linked.html").hardlink_to(image)  # the same file under another name
    assert_one_line_error(cli(["explore", image, "--output-file", tmp_path / "linked.html", "--exist-ok"], tmp_path),
                          1, "is the input image")
    assert image.read_bytes() == MIXED.read_bytes()


def test_out_folder_and_json(tmp_path, random_synth):
    """-o DIR is a run folder as for every command; --json prints the page's record."""
    proc = cli(["explore", MIXED, "--weights", random_synth, "-o", tmp_path / "pages", "--json", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["page"] == "pages/synth_mixed.html" and record["model"] == "rfcn_dcn_synth"
    assert record["bytes"] == (tmp_path / "pages" / "synth_mixed.html").stat().st_size


@pytest.mark.parametrize("args, code, fragments", [
    (["--model", "rfcn_synth"], 2, ["'rfcn_synth' has no deformable conv layers"]),
    (["--plain-model", "rfcn_dcn_coco"], 2, ["'--plain-model'", "not a plain twin", "not an ordinary convolution"]),
    (["--model", "nope"], 2, ["unknown model 'nope'"]),
    (["--model", f"{CUSTOM}:modulated", "--plain-model", "rfcn_synth"], 2, ["'--plain-model'", "registered --model"]),
    (["--effective-at", "1,2,3"], 2, ["'--effective-at'", "expected X,Y"]),
])
def test_bad_options(tmp_path, args, code, fragments):
    assert_one_line_error(cli(["explore", MIXED, *args], tmp_path), code, *fragments)
    assert not (tmp_path / "runs").exists()


def test_many_inputs_one_page_each_and_an_index(tmp_path, random_synth):
    """Files, folders and globs as for `detect`; a missing path among several is reported and skipped, and
    the run exits 1 at the end; -o PAGE.html (or --output-file) is for one image only."""
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(STARS, folder / "stars.jpg")
    shutil.copy(MIXED, folder / "sub" / "mixed.jpg")
    proc = cli(["explore", folder, tmp_path / "missing.jpg", "-r", "--weights", random_synth, "-q"], tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.split() == ["runs/explore/stars.html", "runs/explore/sub/mixed.html"]
    assert proc.stderr.strip() == f"Error: cannot read image '{tmp_path / 'missing.jpg'}': no such file; skipped"
    index = (tmp_path / "runs/explore/index.html").read_text()
    assert re.findall(r'class="dcnviz-page" href="([^"]+)"', index) == ["stars.html", "sub/mixed.html"]
    assert embedded(tmp_path / "runs/explore/sub/mixed.html")["image"]["name"] == "mixed.jpg"
    for args in (["-o", "page.html"], ["--output-file", "page.html"]):
        proc = cli(["explore", STARS, MIXED, *args], tmp_path)
        assert_one_line_error(proc, 2, "'--output-file'", "for one image, got 2")
    assert not (tmp_path / "page.html").exists()


def test_effective_at_outside_the_image_is_a_usage_error(tmp_path):
    proc = cli(["explore", MIXED, "--effective-at", "600,10"], tmp_path)
    assert_one_line_error(proc, 2, "'--effective-at'", "600,10 is outside the 500x375 image")
    assert not (tmp_path / "runs" / "explore").exists()


def test_unreadable_image_leaves_nothing_behind(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert_one_line_error(cli(["explore", broken], tmp_path), 1, "cannot read image", "broken.jpg")
    assert not (tmp_path / "runs" / "explore").exists()
