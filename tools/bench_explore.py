"""Benchmark of the ``dcnviz explore`` page in headless Chromium (Debian's ``chromium``, through Playwright's
Python API): page size, time from navigation to the page being usable, the first hover and later hovers.

    python tests/analysis_models.py rfcn_dcn_coco /tmp/rfcn_dcn_coco-random.safetensors
    python tools/bench_explore.py --model rfcn_dcn_coco --weights /tmp/rfcn_dcn_coco-random.safetensors

makes the page of ``--image`` resized to ``--size`` (default samples/photo_coffee.jpg at 1000x600, so that
rfcn_dcn_coco runs at 600x1000) with ``dcnviz explore``, or measures an existing ``--page``. A hover is
timed from the mouse event's time stamp to the end of the page's handler ("drawn": points computed and in
the DOM) and to the next animation frame after it ("painted"); "handler" is the page's own handler alone
(from the event reaching the window to the end of the page's listener). Chromium dispatches mouse moves
at the start of a frame, so "drawn" also holds up to a frame (16.7 ms at 60 Hz) of waiting for it, and the
rendering of the previous hover. The first hover decodes the offset maps.
``--screenshot PNG`` saves the page after hovering ``--at X,Y`` (image pixels; default: the centre) and,
with ``--click``, clicking there (pins the unit, shows the parts of the detection under it).

Timings depend on the machine and on what else runs on it; compare figures taken in one run only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Registered before any page script: the time the page became usable (body[data-ready="1"]), and a
# mousemove listener that runs after the page's own (listeners fire in registration order; the page
# registers its listeners while it loads, this one is added after ready).
READY_PROBE = """
new MutationObserver((_, obs) => {
  if (document.body && document.body.dataset.ready === "1") { window.__ready = performance.now(); obs.disconnect(); }
}).observe(document, {attributes: true, subtree: true, attributeFilter: ["data-ready"]});
"""
HOVER_PROBE = """
() => {
  window.__hovers = [];
  let start = null;
  window.addEventListener("mousemove", () => { start = performance.now(); }, true);  // capture: before the page's
  document.getElementById("dcnviz-view").addEventListener("mousemove", (e) => {
    const drawn = performance.now();
    requestAnimationFrame(() => window.__hovers.push({drawn: drawn - e.timeStamp, handler: drawn - start,
                                                      painted: performance.now() - e.timeStamp,
                                                      points: document.querySelectorAll(".dcnviz-point").length}));
  });
}
"""


def make_page(args, folder: Path) -> Path:
    import cv2

    width, height = (int(v) for v in args.size.lower().split("x"))
    image = folder / f"{Path(args.image).stem}_{width}x{height}.jpg"
    cv2.imwrite(str(image), cv2.resize(cv2.imread(str(args.image)), (width, height), interpolation=cv2.INTER_AREA),
                [cv2.IMWRITE_JPEG_QUALITY, 95])
    page = folder / "page.html"
    command = [sys.executable, "-m", "dcnviz", "explore", str(image), "-o", str(page), "--device", "cpu", "-q",
               "--model", args.model] + (["--weights", str(args.weights)] if args.weights else []) + args.explore_args
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return page


def measure(page: Path, args) -> dict:
    from playwright.sync_api import sync_playwright

    data_w, data_h = None, None
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"))
        width, height = (int(v) for v in args.viewport.lower().split("x"))
        tab = browser.new_page(viewport={"width": width, "height": height})
        tab.add_init_script(READY_PROBE)
        tab.goto(page.resolve().as_uri())
        tab.wait_for_function("document.body.dataset.ready === '1' && window.__ready !== undefined")
        ready = tab.evaluate("window.__ready")
        tab.evaluate(HOVER_PROBE)
        data_w, data_h = tab.evaluate("[window.dcnviz.data.image.width, window.dcnviz.data.image.height]")
        a, d, e, f = tab.evaluate("(() => { const m = document.getElementById('dcnviz-view').getScreenCTM();"
                                  " return [m.a, m.d, m.e, m.f]; })()")

        def client(x, y):
            return a * x + e, d * y + f

        # a walk over the image: every hover lands on a new cell
        positions = [(data_w * (0.1 + 0.8 * k / max(args.hovers, 1)), data_h * (0.2 + 0.6 * ((k * 7) % 11) / 10))
                     for k in range(args.hovers + 1)]
        for k, (x, y) in enumerate(positions):
            tab.mouse.move(*client(x, y))
            tab.wait_for_function(f"window.__hovers.length >= {k + 1}")
        hovers = tab.evaluate("window.__hovers")
        if args.screenshot:
            x, y = args.at or (data_w / 2, data_h / 2)
            tab.mouse.move(*client(x, y))
            if args.click:
                tab.mouse.click(*client(x, y))
            jpeg = args.screenshot.suffix.lower() in (".jpg", ".jpeg")
            tab.screenshot(path=str(args.screenshot), **({"quality": 85} if jpeg else {}))
        browser.close()
    later = [h["painted"] for h in hovers[1:]]
    drawn = [h["drawn"] for h in hovers[1:]]
    handler = sorted(h["handler"] for h in hovers[1:])
    return {
        "page": str(page), "page_bytes": page.stat().st_size, "image": [data_w, data_h],
        "points_per_hover": hovers[0]["points"],
        "ready_ms": round(ready, 1),
        "first_hover_drawn_ms": round(hovers[0]["drawn"], 1), "first_hover_painted_ms": round(hovers[0]["painted"], 1),
        "load_to_first_hover_painted_ms": round(ready + hovers[0]["painted"], 1),
        "later_hovers": len(later),
        "later_hover_drawn_ms": {"median": round(statistics.median(drawn), 1), "max": round(max(drawn), 1)},
        "later_hover_handler_ms": {"median": round(statistics.median(handler), 1),
                                   "p90": round(handler[int(0.9 * (len(handler) - 1))], 1), "max": round(handler[-1], 1)},
        "later_hover_painted_ms": {"median": round(statistics.median(later), 1),
                                   "p90": round(sorted(later)[int(0.9 * (len(later) - 1))], 1),
                                   "max": round(max(later), 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", type=Path, help="Measure this page instead of making one.")
    parser.add_argument("--model", default="rfcn_dcn_coco")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--image", type=Path, default=ROOT / "samples" / "photo_coffee.jpg")
    parser.add_argument("--size", default="1000x600", help="WIDTHxHEIGHT the image is resized to (default 1000x600).")
    parser.add_argument("--explore-args", nargs=argparse.REMAINDER, default=[],
                        help="Further options of dcnviz explore (last on the line).")
    parser.add_argument("--hovers", type=int, default=50, help="Later hovers to time (default 50).")
    parser.add_argument("--screenshot", type=Path, help="Save a screenshot of the page here.")
    parser.add_argument("--at", type=lambda s: tuple(float(v) for v in s.split(",")), help="X,Y to hover for it.")
    parser.add_argument("--click", action="store_true", help="Click there before the screenshot.")
    parser.add_argument("--viewport", default="1400x850", help="WIDTHxHEIGHT of the browser window (default 1400x850).")
    parser.add_argument("--keep", type=Path, help="Copy the page made here.")
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        page = args.page or make_page(args, Path(tmp))
        if args.keep and not args.page:
            shutil.copy(page, args.keep)
        result = measure(page, args)
    if args.keep:
        result["page"] = str(args.keep)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
