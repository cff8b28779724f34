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
    OUT/labels/<name>.txt     detect --save-txt: YOLO-format labels
    OUT/preds.coco.json       detect --save-coco: COCO results list for all images
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import click
import numpy as np

import dcnviz

from dcnviz.cli.common import (TASK_COMMANDS, deprecated, in_dtype, model_options, parse_classes, resolve_model,
                               select_device, show_option, source_options)
from dcnviz.errors import ImageError
from dcnviz.io.images import find_images, read_image, write_bytes_atomic, write_image_atomic, write_json_atomic, \
    write_png_palette_atomic
from dcnviz.io.outputs import output_names, run_dir
from dcnviz.io.results_json import class_histogram, coco_category_ids, coco_image_ids, coco_results, \
    detection_record, error_record, segmentation_record, yolo_lines
from dcnviz.structures import Detections, Segmentation
from dcnviz.models.postprocess import DEFAULT_CONF, filter_detections
from dcnviz.viz.draw import draw_detections, overlay_segmentation, side_by_side

SUBDIRS = {"detection": ("vis", "preds", "labels"), "segmentation": ("vis", "preds", "masks")}
COCO_FILE = "preds.coco.json"

batch_option = click.option(
    "--batch", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
    help="Images per forward. Only images whose network inputs have the same size share one (no padding): "
         "images of different sizes fall back to smaller batches. Results equal --batch 1; video frames go one "
         "at a time.")
imgsz_option = click.option("--imgsz", type=click.IntRange(min=32), metavar="PX",
                            help="Resize images to this short side (the long-side limit scales with it)  "
                                 "[default: the model's test size, e.g. 600]")


@dataclasses.dataclass
class RunOptions:
    """How ``run_predictions`` reports and saves. ``model`` is the registry name written into the
    JSON records; ``palette`` the RGB colour per class for detection boxes (None: generated);
    ``category_ids`` maps network labels to COCO category ids for ``save_coco`` (None: labels); ``batch``:
    images per forward (``--batch``)."""

    model: str
    palette: Sequence[tuple[int, int, int]] | None = None
    category_ids: Sequence[int] | None = None
    alpha: float = 0.5
    quiet: bool = False
    json: bool = False
    save_coco: bool = False
    line_width: int | None = None
    hide_labels: bool = False
    hide_conf: bool = False
    save_txt: bool = False
    save_conf: bool = False
    side_by_side: bool = False
    batch: int = 1
    # where --show puts each drawn picture (dcnviz.viz.show.open_window), or None
    window: object | None = None
    # (height, width) of the images the model was trained on when that is all it knows (the bundled
    # synthetic models): an image of another size is most likely a photo, and gets one warning.
    trained_sizes: Sequence[tuple[int, int]] | None = None


@dataclasses.dataclass
class RunSummary:
    out_dir: Path
    processed: int
    failed: list[str]


def run_predictions(task: str, images: Sequence[Path], predictor: Callable[[np.ndarray], object],
                    out_dir: Path, opts: RunOptions,
                    predict_many: Callable[[list[np.ndarray]], list] | None = None) -> RunSummary:
    """Run ``predictor`` over ``images`` and save/report the results (see module doc for files).

    ``task`` is "detection" (predictor returns :class:`~dcnviz.structures.Detections`) or
    "segmentation" (:class:`~dcnviz.structures.Segmentation`); the result must be for the image as
    read (original size, EXIF orientation applied). ``predict_many`` (images -> their results, e.g. through
    :func:`dcnviz.models.batching.predict_batch`) is given ``opts.batch`` images at a time instead; drawing
    and saving stay per image. Images that cannot be read are reported in one line each and skipped;
    ``RunSummary.failed`` holds their messages.
    """
    if task not in SUBDIRS:
        raise ValueError(f"task must be one of {sorted(SUBDIRS)}, got {task!r}")
    if opts.save_coco and task != "detection":
        raise ValueError("COCO results are written for detection only")
    many = predict_many or (lambda batch: [predictor(image) for image in batch])
    names, image_ids = output_names(images), coco_image_ids(images)
    log = _Log(len(images), opts)
    coco, failed, seconds = [], [], np.zeros(3)
    warned = False
    try:
        for start in range(0, len(images), opts.batch):
            batch = []
            for i, path in enumerate(images[start:start + opts.batch], start + 1):
                t0 = time.perf_counter()
                try:
                    image = read_image(path)
                except ImageError as e:
                    failed.append(str(e))
                    log.error(f"{e}; skipped" if len(images) > 1 else str(e))
                    log.json(error_record(path, str(e)))
                    log.advance()
                    continue
                seconds[0] += time.perf_counter() - t0
                if opts.trained_sizes and not warned and image.shape[:2] not in opts.trained_sizes:
                    warned = True
                    log.info(f"Warning: {opts.model} was trained on dcnviz's synthetic scenes only (worm, star, "
                             f"ring, blob, cross); on photos such as {path} it finds little. For photos use an "
                             "official model (dcnviz models).")
                batch.append((i, path, image))
            if not batch:
                continue
            t1 = time.perf_counter()
            results = many([image for _, _, image in batch])
            each = (time.perf_counter() - t1) / len(batch)  # a batch's forward is shared by its images
            of = f" (batch of {len(batch)})" if len(batch) > 1 else ""
            for (i, path, image), result in zip(batch, results):
                t2 = time.perf_counter()
                _check_result(task, result, image)
                record, summary = _save(task, result, image, path, out_dir, names[path], image_ids[path], opts)
                if opts.save_coco:
                    coco += coco_results(result, image_ids[path], opts.category_ids)
                log.json(record)
                seconds[1:] += (each, time.perf_counter() - t2)
                h, w = image.shape[:2]
                log.info(f"{i}/{len(images)} {path}: {w}x{h}, {summary}, {1000 * each:.1f} ms{of}")
                log.advance()
    finally:
        log.close()
    processed = len(images) - len(failed)
    if opts.save_coco and processed:
        write_json_atomic(out_dir / COCO_FILE, coco, expand=1)
    if processed:
        read_ms, predict_ms, save_ms = 1000 * seconds / processed
        log.info(f"Speed: {read_ms:.1f} ms read, {predict_ms:.1f} ms predict, {save_ms:.1f} ms draw+save "
                 f"per image ({processed} image{'s' * (processed > 1)}"
                 f"{f', batches of up to {opts.batch}' if opts.batch > 1 else ''})")
        log.info(f"Results saved to {out_dir}")
    if failed and len(images) > 1:
        log.error(f"{len(failed)} of {len(images)} images could not be read and were skipped")
    return RunSummary(out_dir, processed, failed)


def output_files(task: str, path: Path, name: Path, save_txt: bool = False) -> dict[str, Path]:
    """The files one image's results go to, relative to the run folder, by subfolder."""
    files = {"vis": Path("vis") / name.with_name(name.name + _vis_suffix(path)),
             "preds": Path("preds") / name.with_name(name.name + ".json")}
    if task == "segmentation":
        files["masks"] = Path("masks") / name.with_name(name.name + ".png")
    elif save_txt:
        files["labels"] = Path("labels") / name.with_name(name.name + ".txt")
    return files


def planned_outputs(task: str, images: Sequence[Path], save_coco: bool = False, save_txt: bool = False) -> list[Path]:
    """Every file a run over ``images`` may write, relative to the run folder (checked against the
    inputs before anything is written)."""
    names = output_names(images)
    planned = [rel for path in images for rel in output_files(task, path, names[path], save_txt).values()]
    return planned + ([Path(COCO_FILE)] if save_coco else [])


def _save(task: str, result, image: np.ndarray, path: Path, out_dir: Path, name: Path, image_id: int,
          opts: RunOptions) -> tuple[dict, str]:
    """Write one image's picture, JSON (and mask); return its record and log summary."""
    files = {key: out_dir / rel for key, rel in output_files(task, path, name, opts.save_txt).items()}
    vis, json_path = files["vis"], files["preds"]
    picture = _draw(task, result, image, opts)
    write_image_atomic(vis, picture)
    if opts.window is not None:
        from dcnviz.viz.show import IMAGE_DELAY

        opts.window.show(picture, str(path), IMAGE_DELAY)
    if task == "detection":
        if opts.save_txt:
            write_bytes_atomic(files["labels"], yolo_lines(result, opts.save_conf).encode())
        record = detection_record(result, image=path, image_id=image_id, model=opts.model, vis=vis)
        summary = _detections_summary(result)
    else:
        mask = files["masks"]
        write_png_palette_atomic(mask, result.labels, result.palette)
        record = segmentation_record(result, image=path, model=opts.model, vis=vis, mask=mask)
        summary = _segmentation_summary(result)
    write_json_atomic(json_path, record)
    return record, summary


def _draw(task: str, result, image: np.ndarray, opts: RunOptions) -> np.ndarray:
    if task == "detection":
        return draw_detections(image, result, opts.palette, line_width=opts.line_width,
                               labels=not opts.hide_labels, conf=not opts.hide_conf)
    draw = side_by_side if opts.side_by_side else overlay_segmentation
    return draw(image, result, alpha=opts.alpha)


def run_video(task: str, video: Path, predictor: Callable[[np.ndarray], object], out_dir: Path, name: Path,
              opts: RunOptions) -> int:
    """Run ``predictor`` on every frame of ``video``; write OUT/vis/NAME.mp4 (the drawn frames, same frame
    rate), OUT/preds/NAME.jsonl (one record per frame, with its 0-based ``frame`` number) and with
    ``save_txt`` OUT/labels/NAME_<frame>.txt. Returns the number of frames. Raises
    :class:`~dcnviz.errors.ImageError` for a file OpenCV cannot read (nothing is left written)."""
    from dcnviz.io.video import VideoReader, video_writer
    from dcnviz.viz.show import FRAME_DELAY

    reader = VideoReader(video)
    vis = out_dir / "vis" / name.with_name(name.name + ".mp4")
    log = _Log(reader.frames, opts, unit="frame")
    records, start = [], time.perf_counter()
    try:
        frames = iter(reader)
        first = next(frames)
        h, w = first.shape[:2]
        with video_writer(vis, reader.fps, (w, h)) as writer:
            for k, frame in enumerate(itertools.chain([first], frames)):
                result = predictor(frame)
                _check_result(task, result, frame)
                drawn = _draw(task, result, frame, opts)
                writer.write(drawn)
                if opts.window is not None:
                    opts.window.show(drawn, f"{video} frame {k}", FRAME_DELAY)
                if task == "detection":
                    record = detection_record(result, image=video, image_id=k, model=opts.model, vis=vis)
                    if opts.save_txt:
                        labels = out_dir / "labels" / name.with_name(f"{name.name}_{k}.txt")
                        write_bytes_atomic(labels, yolo_lines(result, opts.save_conf).encode())
                else:
                    record = segmentation_record(result, image=video, model=opts.model, vis=vis, mask=None)
                record["frame"] = k
                records.append(record)
                log.json(record)
                log.advance()
    finally:
        log.close()
    write_bytes_atomic(out_dir / "preds" / name.with_name(name.name + ".jsonl"),
                       "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode())
    seconds = time.perf_counter() - start
    log.info(f"{video}: {len(records)} frames of {w}x{h} at {reader.fps:g} fps, "
             f"{1000 * seconds / len(records):.1f} ms per frame -> {vis}")
    return len(records)


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
@click.option("--save-txt", is_flag=True, help="Also write OUT/labels/NAME.txt, YOLO-format labels "
                                                "(class x_centre y_centre width height, normalised).")
@click.option("--save-conf", is_flag=True, help="With --save-txt: add the score as a sixth column.")
@imgsz_option
@click.option("--line-width", type=click.IntRange(min=1), metavar="PX",
              help="Box line width in pixels  [default: follows the image size]")
@click.option("--hide-labels", is_flag=True, help="Draw boxes without class and score.")
@click.option("--hide-conf", is_flag=True, help="Draw the class without the score.")
@batch_option
@show_option()
@click.pass_context
def detect(ctx, sources, recursive, model, weights, device, out, exist_ok, quiet, json_out, dtype, conf,
           classes, max_det, save_coco, save_txt, save_conf, imgsz, line_width, hide_labels, hide_conf, batch, show):
    """Detect objects in images: SOURCE is an image, a folder or a quoted glob ('photos/*.jpg').

    For each image it writes OUT/vis/NAME (boxes with class and score) and OUT/preds/NAME.json
    (boxes [x1, y1, x2, y2] in original pixels, score, class id and name). Images that cannot be
    read are reported and skipped; the exit status is then 1.

    \b
    Examples:
      dcnviz detect samples/
      dcnviz detect 'photos/**/*.jpg' -m rfcn_dcn_coco --conf 0.7 --classes person,car --json > results.jsonl
    """
    images, videos = split_sources(sources, recursive)
    spec = resolve_model(model, "detection")
    keep = parse_classes(classes, spec.classes)
    if save_conf and not save_txt:
        raise click.BadParameter("goes with --save-txt", param_hint="'--save-conf'")
    opts = RunOptions(model=spec.name, palette=spec.palette,
                      category_ids=coco_category_ids(spec.classes, spec.dataset), quiet=quiet,
                      json=json_out, save_coco=save_coco, save_txt=save_txt, save_conf=save_conf,
                      line_width=line_width, hide_labels=hide_labels, hide_conf=hide_conf,
                      trained_sizes=_trained_sizes(spec), batch=batch)
    _run(ctx, "detection", images, videos, spec, weights, device, out, exist_ok, opts,
         lambda found: [filter_detections(d, conf, keep, max_det) for d in found], imgsz, show, dtype)


@click.command()
@source_options
@model_options("segmentation")
@click.option("--overlay-alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Opacity of the class colours in the overlay.")
@click.option("--alpha", "old_alpha", type=click.FloatRange(0, 1), hidden=True, help="Deprecated: --overlay-alpha.")
@click.option("--side-by-side", is_flag=True, help="Save image | colour mask | overlay side by side in OUT/vis.")
@imgsz_option
@batch_option
@show_option()
@click.pass_context
def segment(ctx, sources, recursive, model, weights, device, out, exist_ok, quiet, json_out, dtype, overlay_alpha,
            old_alpha, side_by_side, imgsz, batch, show):
    """Label every pixel of images: SOURCE is an image, a folder or a quoted glob ('photos/*.jpg').

    For each image it writes OUT/vis/NAME (colour overlay with a legend), OUT/masks/NAME.png (the
    label map as a palette PNG: pixel value = class id) and OUT/preds/NAME.json (pixels per class).
    Images that cannot be read are reported and skipped; the exit status is then 1.

    \b
    Examples:
      dcnviz segment samples/
      dcnviz segment street.png --device cpu --overlay-alpha 0.6 --side-by-side
    """
    if old_alpha is not None:
        deprecated(f"'--alpha {old_alpha:g}'", f"'--overlay-alpha {old_alpha:g}'")
        overlay_alpha = old_alpha
    images, videos = split_sources(sources, recursive)
    spec = resolve_model(model, "segmentation")
    opts = RunOptions(model=spec.name, alpha=overlay_alpha, quiet=quiet, json=json_out, side_by_side=side_by_side,
                      trained_sizes=_trained_sizes(spec), batch=batch)
    _run(ctx, "segmentation", images, videos, spec, weights, device, out, exist_ok, opts, list, imgsz, show, dtype)


def split_sources(sources: Sequence[str], recursive: bool) -> tuple[list[Path], list[Path]]:
    """(images, videos) of SOURCE...: video files named explicitly (:data:`dcnviz.io.video.VIDEO_SUFFIXES`)
    are run frame by frame; everything else goes through :func:`find_images` (a folder of frames is a
    folder of images)."""
    from dcnviz.io.video import is_video

    videos = [Path(s) for s in sources if is_video(s)]
    rest = [s for s in sources if not is_video(s)]
    return (find_images(rest, recursive) if rest else []), videos


def _run(ctx: click.Context, task: str, images: Sequence[Path], videos: Sequence[Path], spec, weights: Path | None,
         device: str, out: Path, exist_ok: bool, opts: RunOptions, keep: Callable[[list], list],
         imgsz: int | None = None, show: bool = False, dtype: str = "float32") -> None:
    """Choose the device, create the output folder, load the model (in ``dtype``), run; exit 1 if inputs
    failed. ``keep`` filters the model's results of a batch (e.g. by score); ``show`` opens a window for the
    results."""
    from dcnviz.models.batching import predict_batch
    from dcnviz.viz.show import open_window

    dev = select_device(device)
    failed = 0
    planned = planned_outputs(task, images, opts.save_coco, opts.save_txt)
    with run_dir(out, exist_ok, SUBDIRS[task], [*images, *videos], planned) as out_dir:
        net = in_dtype(dcnviz.load_model(spec.name, weights, dev), dtype, _warn(opts))
        if imgsz is not None:
            net.scales = test_scales(net.scales, imgsz)
        if not opts.quiet:
            what = [f"{n} {kind}{'s' * (n > 1)}" for n, kind in ((len(images), "image"), (len(videos), "video")) if n]
            click.echo(f"{spec.name} on {dev}: {', '.join(what)}", err=True)

        def predict_many(batch: list[np.ndarray]) -> list:
            return keep(predict_batch(net, batch))

        def predictor(image: np.ndarray):
            return predict_many([image])[0]

        if show:
            opts = dataclasses.replace(opts, window=open_window(f"dcnviz {TASK_COMMANDS[task]}", _warn(opts)))
        try:
            if images:
                failed += len(run_predictions(task, images, predictor, out_dir, opts, predict_many).failed)
            names = output_names(videos)
            for video in videos:
                try:
                    run_video(task, video, predictor, out_dir, names[video], opts)
                except ImageError as e:
                    failed += 1
                    click.echo(f"Error: {e}" + ("; skipped" if len(images) + len(videos) > 1 else ""), err=True)
        finally:
            if opts.window is not None:
                opts.window.close()
        if videos and not images and not opts.quiet:  # run_predictions says it for images
            click.echo(f"Results saved to {out_dir}", err=True)
    if failed:
        ctx.exit(1)


def _warn(opts: RunOptions) -> Callable[[str], None]:
    return (lambda line: None) if opts.quiet else (lambda line: click.echo(line, err=True))


def test_scales(scales: tuple[int, int], short: int) -> tuple[int, int]:
    """A model's test (short, long) sizes with the short side set to ``short`` and the long-side limit
    scaled with it (the official 600/1000 becomes 800/1333 for --imgsz 800)."""
    return short, round(short * scales[1] / scales[0])


def _trained_sizes(spec) -> tuple[tuple[int, int], ...] | None:
    """The scene sizes of a model trained only on dcnviz's synthetic scenes (None for any other)."""
    from dcnviz.data.synth import SCENE_SIZES

    return SCENE_SIZES if spec.dataset == "synth" else None


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
    ``--json`` records to stdout, and a tqdm bar on stderr when stderr is a terminal. Off a terminal (a
    log file, a pipe) the one line per image is the progress: a bar there is only carriage-return noise."""

    def __init__(self, total: int, opts: RunOptions, unit: str = "img"):
        self.quiet, self.emit_json = opts.quiet, opts.json
        self.bar = None
        if not opts.quiet and not opts.json and total > 1 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False)

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
