"""The ``dcnviz`` command line. Each command lives in its own module and is imported only when run,
so ``dcnviz --help`` stays fast."""
from __future__ import annotations

import importlib

import click

from dcnviz import __version__
from dcnviz.cli.common import debug_option, one_line_usage_error, report_errors

# command name -> (module, attribute, one-line help)
COMMANDS = {
    "bench": ("dcnviz.cli.bench", "bench", "Time the operators and models."),
    "convert": ("dcnviz.cli.convert", "convert", "Convert official MXNet .params weights to .safetensors."),
    "detect": ("dcnviz.cli.predict", "detect", "Detect objects in images; save annotated images and JSON."),
    "dilation-stats": ("dcnviz.cli.dilation_stats", "dilation_stats",
                       "Effective dilation per layer and object size over a dataset (paper Table 2)."),
    "effective": ("dcnviz.cli.effective", "effective",
                  "DCNv2's effective sampling locations, receptive field and saliency region of nodes."),
    "eval": ("dcnviz.cli.eval", "eval_", "Detection AP or segmentation mIoU of a model on a dataset split."),
    "explore": ("dcnviz.cli.explore", "explore",
                "An interactive HTML page: the sampling points of the unit under the mouse, RoI parts."),
    "models": ("dcnviz.cli.models", "models", "List the registered models, their size and where their weights are."),
    "offsets": ("dcnviz.cli.offsets", "offsets", "Where deformable filters sample: composed sampling points (Fig. 6)."),
    "receptive-field": ("dcnviz.cli.receptive_field", "receptive_field",
                        "Fixed vs adaptive receptive field of a plain and a deformable model (Fig. 5)."),
    "rois": ("dcnviz.cli.rois", "rois", "Parts of deformable PS RoI pooling moved by their offsets (Fig. 7)."),
    "segment": ("dcnviz.cli.predict", "segment", "Label every pixel of images; save overlays, masks and JSON."),
    "synth": ("dcnviz.cli.synth", "synth", "Generate a synthetic VOC-layout dataset."),
    "train": ("dcnviz.cli.train", "train", "Train one of dcnviz's own models on a VOC-layout folder."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def make_context(self, *args, **kwargs):
        # Errors in the group's own options (``dcnviz --bogus``) come from here, before ``invoke``.
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            raise one_line_usage_error(e) from None

    def invoke(self, ctx):
        # Every command runs inside here, so this is the one place that keeps tracebacks from users.
        with report_errors(ctx):
            return super().invoke(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
# The version comes from the package, not its install metadata, so it also works from a source tree.
@click.version_option(__version__, package_name="dcnviz")
@debug_option
def main():
    """Run and look inside Deformable ConvNets (v1)."""


def run():
    """The ``dcnviz`` console script and ``python -m dcnviz``: :func:`main` in a process that keeps its
    freed memory for the next forward (:mod:`dcnviz.memory`)."""
    from dcnviz.memory import keep_freed_memory

    keep_freed_memory()
    main()
