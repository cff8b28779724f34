"""``dcnviz detect`` and ``dcnviz segment``: run a model over images, save pictures and JSON.

The commands only parse options, load the model and hand a predictor (a callable
``image_bgr -> Detections | Segmentation``) to :func:`run_predictions`, which does everything
model-independent: reading each image once, skipping bad files with a one-line report, drawing,
writing ``vis/``, ``preds/`` (and ``masks/``), ``--json`` lines, ``--save-coco``, the log.

Output folder layout (``OUT`` = runs/detect, runs/detect2, …; names mirror the inputs, see
:func:`dcnviz.io.outputs.output_names`)::

    OUT/vis/<name>.jpg|.png   annotated image / colour overlay (.jpg for JPEG inputs, else .png)
    OUT/preds/<name>.json     the image's record (dcnviz/schemas/*.schema.json)
    OUT/masks/<name>.png      segment: palette PNG, pixel value = class id
    OUT/preds.coco.json       detect --save-coco: COCO results list for all images
"""
from __future__ import annotations

import collections
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np

import dcnviz

from dcnviz.cli.common import model_options, parse_classes, resolve_model, select_device, source_options
from dcnviz.errors import ImageError
from dcnviz.io.images import find_images, read_image, write_image_atomic, write_json_atomic, \
    write_png_palette_atomic
from dcnviz.io.outputs import output_names, run_dir
from dcnviz.io.results_json import class_histogram, coco_category_ids, coco_image_ids, coco_results, \
    detection_record, error_record, segmentation_record
from dcnviz.structures import Detections, Segmentation
from dcnviz.models.postprocess import DEFAULT_CONF, filter_detections
from dcnviz.viz.draw import draw_detections, overlay_segmentation

SUBDIRS = {"detection": ("vis", "preds"), "segmentation": ("vis", "preds", "masks")}
COCO_FILE = "preds.coco.json"
# Runs of at least this many images show a progress bar even when stderr is not a terminal.
MANY_IMAGES = 100


@dataclasses.dataclass
class RunOptions:
    """How ``run_predictions`` reports and saves. ``model`` is the registry name written into the
    JSON records; ``palette`` the RGB colour per class for detection boxes (None: generated);
    ``category_ids`` maps network labels to COCO category ids for ``save_coco`` (None: labels)."""

    model: str
    palette: Sequence[tuple[int, int, int]] | None = None
    category_ids: Sequence[int] | None = None
    alpha: float = 0.5
    quiet: bool = False
    json: bool = False
    save_coco: bool = False


@dataclasses.dataclass
class RunSummary:
    out_dir: Path
    processed: int
    failed: list[str]


def run_predictions(task: str, images: Sequence[Path], predictor: Callable[[np.ndarray], object],
                    out_dir: Path, opts: RunOptions) -> RunSummary:
    """Run ``predictor`` over ``images`` and save/report the results (see module doc for files).

    ``task`` is "detection" (predictor returns :class:`~dcnviz.structures.Detections`) or
    "segmentation" (:class:`~dcnviz.structures.Segmentation`); the result must be for the image as
    read (original size, EXIF orientation applied). Images that cannot be read are reported in one
    line each and skipped; ``RunSummary.failed`` holds their messages.
    """
    if task not in SUBDIRS:
        raise ValueError(f"task must be one of {sorted(SUBDIRS)}, got {task!r}")
    if opts.save_coco and task != "detection":
        raise ValueError("COCO results are written for detection only")
    names, image_ids = output_names(images), coco_image_ids(images)
    log = _Log(len(images), opts)
    coco, failed, seconds = [], [], np.zeros(3)
    try:
        for i, path in enumerate(images, 1):
            t0 = time.perf_counter()
            try:
                image = read_image(path)
            except ImageError as e:
                failed.append(str(e))
                log.error(f"{e}; skipped" if len(images) > 1 else str(e))
                log.json(error_record(path, str(e)))
                log.advance()
                continue
            t1 = time.perf_counter()
            result = predictor(image)
            t2 = time.perf_counter()
            _check_result(task, result, image)
            record, summary = _save(task, result, image, path, out_dir, names[path], image_ids[path], opts)
            if opts.save_coco:
                coco += coco_results(result, image_ids[path], opts.category_ids)
            log.json(record)
            seconds += (t1 - t0, t2 - t1, time.perf_counter() - t2)
            h, w = image.shape[:2]
            log.info(f"{i}/{len(images)} {path}: {w}x{h}, {summary}, {1000 * (t2 - t1):.1f} ms")
            log.advance()
    finally:
        log.close()
    processed = len(images) - len(failed)
    if opts.save_coco and processed:
        write_json_atomic(out_dir / COCO_FILE, coco, expand=1)
    if processed:
        read_ms, predict_ms, save_ms = 1000 * seconds / processed
        log.info(f"Speed: {read_ms:.1f} ms read, {predict_ms:.1f} ms predict, {save_ms:.1f} ms draw+save "
                 f"per image ({processed} image{'s' * (processed > 1)})")
        log.info(f"Results saved to {out_dir}")
    if failed and len(images) > 1:
        log.error(f"{len(failed)} of {len(images)} images could not be read and were skipped")
    return RunSummary(out_dir, processed, failed)


def output_files(task: str, path: Path, name: Path) -> dict[str, Path]:
    """The files one image's results go to, relative to the run folder, by subfolder."""
    files = {"vis": Path("vis") / name.with_name(name.name + _vis_suffix(path)),
             "preds": Path("preds") / name.with_name(name.name + ".json")}
    if task == "segmentation":
        files["masks"] = Path("masks") / name.with_name(name.name + ".png")
    return files


def planned_outputs(task: str, images: Sequence[Path], save_coco: bool = False) -> list[Path]:
    """Every file a run over ``images`` may write, relative to the run folder (checked against the
    inputs before anything is written)."""
    names = output_names(images)
    planned = [rel for path in images for rel in output_files(task, path, names[path]).values()]
    return planned + ([Path(COCO_FILE)] if save_coco else [])


def _save(task: str, result, image: np.ndarray, path: Path, out_dir: Path, name: Path, image_id: int,
          opts: RunOptions) -> tuple[dict, str]:
    """Write one image's picture, JSON (and mask); return its record and log summary."""
    files = {key: out_dir / rel for key, rel in output_files(task, path, name).items()}
    vis, json_path = files["vis"], files["preds"]
    if task == "detection":
        write_image_atomic(vis, draw_detections(image, result, opts.palette))
        record = detection_record(result, image=path, image_id=image_id, model=opts.model, vis=vis)
        summary = _detections_summary(result)
    else:
        mask = files["masks"]
        write_png_palette_atomic(mask, result.labels, result.palette)
        write_image_atomic(vis, overlay_segmentation(image, result, alpha=opts.alpha))
        record = segmentation_record(result, image=path, model=opts.model, vis=vis, mask=mask)
        summary = _segmentation_summary(result)
    write_json_atomic(json_path, record)
    return record, summary


@click.command()
@source_options
@model_options("detection")
@click.option("--conf", type=click.FloatRange(0, 1), default=DEFAULT_CONF, show_default=True,
              help="Keep detections with at least this score.")
@click.option("--classes", multiple=True, metavar="LIST",
              help="Keep only these classes: names or class ids, comma-separated (repeatable).")
@click.option("--max-det", type=click.IntRange(min=1), default=100, show_default=True,
              help="Keep at most this many detections per image (the highest scores).")
@click.option("--save-coco", is_flag=True, help=f"Also write OUT/{COCO_FILE}, a COCO results list.")
@click.pass_context
def detect(ctx, sources, recursive, model, weights, device, out, exist_ok, quiet, json_out, conf,
           classes, max_det, save_coco):
    """Detect objects in images: SOURCE is an image, a folder or a quoted glob ('photos/*.jpg').

    For each image it writes OUT/vis/NAME (boxes with class and score) and OUT/preds/NAME.json
    (boxes [x1, y1, x2, y2] in original pixels, score, class id and name). Images that cannot be
    read are reported and skipped; the exit status is then 1.

    \b
    Examples:
      dcnviz detect samples/
      dcnviz detect 'photos/**/*.jpg' -m rfcn_dcn_coco --conf 0.7 --classes person,car --json > results.jsonl
    """
    images = find_images(sources, recursive)
    spec = resolve_model(model, "detection")
    keep = parse_classes(classes, spec.classes)
    opts = RunOptions(model=spec.name, palette=spec.palette,
                      category_ids=coco_category_ids(spec.classes, spec.dataset), quiet=quiet,
                      json=json_out, save_coco=save_coco)
    _run(ctx, "detection", images, spec, weights, device, out, exist_ok, opts,
         lambda net: lambda image: filter_detections(net.predict(image), conf, keep, max_det))


@click.command()
@source_options
@model_options("segmentation")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Opacity of the class colours in the overlay.")
@click.pass_context
def segment(ctx, sources, recursive, model, weights, device, out, exist_ok, quiet, json_out, alpha):
    """Label every pixel of images: SOURCE is an image, a folder or a quoted glob ('photos/*.jpg').

    For each image it writes OUT/vis/NAME (colour overlay with a legend), OUT/masks/NAME.png (the
    label map as a palette PNG: pixel value = class id) and OUT/preds/NAME.json (pixels per class).
    Images that cannot be read are reported and skipped; the exit status is then 1.

    \b
    Examples:
      dcnviz segment samples/
      dcnviz segment street.png --device cpu --alpha 0.6
    """
    images = find_images(sources, recursive)
    spec = resolve_model(model, "segmentation")
    opts = RunOptions(model=spec.name, alpha=alpha, quiet=quiet, json=json_out)
    _run(ctx, "segmentation", images, spec, weights, device, out, exist_ok, opts, lambda net: net.predict)


def _run(ctx: click.Context, task: str, images: Sequence[Path], spec, weights: Path | None, device: str,
         out: Path, exist_ok: bool, opts: RunOptions, make_predictor: Callable) -> None:
    """Choose the device, create the output folder, load the model, run; exit 1 if images failed."""
    dev = select_device(device, warn=None if opts.quiet else lambda line: click.echo(line, err=True))
    planned = planned_outputs(task, images, opts.save_coco)
    with run_dir(out, exist_ok, SUBDIRS[task], images, planned) as out_dir:
        net = dcnviz.load_model(spec.name, weights, dev)
        if not opts.quiet:
            n = len(images)
            click.echo(f"{spec.name} on {dev}: {n} image{'s' * (n > 1)}", err=True)
        summary = run_predictions(task, images, make_predictor(net), out_dir, opts)
    if summary.failed:
        ctx.exit(1)


def _check_result(task: str, result, image: np.ndarray) -> None:
    """Catch a predictor returning the wrong kind of result, or one for another image size (a
    model that forgot EXIF orientation or to map boxes back to original pixels)."""
    kind = Detections if task == "detection" else Segmentation
    if not isinstance(result, kind):
        raise TypeError(f"the {task} predictor returned {type(result).__name__}, not {kind.__name__}")
    size = tuple(result.prep.image_size) if kind is Detections else result.labels.shape
    if tuple(size) != image.shape[:2]:
        raise ValueError(f"the predictor returned a result for a {size[1]}x{size[0]} image, "
                         f"but the image is {image.shape[1]}x{image.shape[0]}")


def _vis_suffix(path: Path) -> str:
    return ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"


def _detections_summary(dets: Detections) -> str:
    if len(dets) == 0:
        return "no detections"
    counts = collections.Counter(dets.class_names[int(c)] for c in dets.labels)
    detail = ", ".join(f"{n} {name}" for name, n in counts.most_common())
    return f"{len(dets)} detection{'s' * (len(dets) > 1)} ({detail})"


def _segmentation_summary(seg: Segmentation, top: int = 4) -> str:
    counts = class_histogram(seg.labels, len(seg.class_names))
    present = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
    detail = ", ".join(f"{seg.class_names[c]} {100 * counts[c] / seg.labels.size:.0f}%" for c in present[:top])
    more = ", …" if len(present) > top else ""
    return f"{len(present)} class{'es' * (len(present) != 1)} ({detail}{more})"


class _Log:
    """Where a run's messages go: log lines and errors to stderr (errors even with --quiet),
    ``--json`` records to stdout, and a tqdm bar on stderr when it helps (see ``MANY_IMAGES``)."""

    def __init__(self, total: int, opts: RunOptions):
        self.quiet, self.emit_json = opts.quiet, opts.json
        tty = sys.stderr.isatty()
        show = not opts.quiet and not opts.json and total > 1 and (tty or total >= MANY_IMAGES)
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr, leave=False,
                            mininterval=0.1 if tty else 30.0)

    def info(self, line: str) -> None:
        if not self.quiet:
            self._write(line)

    def error(self, line: str) -> None:
        self._write(f"Error: {line}")

    def json(self, record: dict) -> None:
        if self.emit_json:
            sys.stdout.write(json.dumps(record, allow_nan=False) + "\n")
            sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
