"""The ``dcnviz`` command line. Each command lives in its own module and is imported only when run,
so ``dcnviz --help`` stays fast."""
from __future__ import annotations

import importlib

import click

# command name -> (module, attribute, one-line help)
COMMANDS = {
    "bench": ("dcnviz.cli.bench", "bench", "Time the operators and models."),
    "eval": ("dcnviz.cli.eval", "eval_", "Detection AP or segmentation mIoU of a model on a dataset split."),
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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcnviz")
def main():
    """Run and look inside Deformable ConvNets (v1)."""
