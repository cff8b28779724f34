"""One command line: every command's --help is walked and its shared options are checked against the
factories in dcnviz.cli.common (same flags, same kind of value, same defaults). The walk covers whatever
``dcnviz --help`` lists, so a new command is checked without touching this file: a command that runs a
model must offer the whole run vocabulary unless it is listed in ``LESS`` with the reason."""
from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dcnviz.cli import common, main


def _declared(decorator) -> click.Option:
    """The click.Option a factory's decorator declares."""
    (option,) = decorator(lambda: None).__click_params__
    return option


def _long(option: click.Option) -> str:
    return max(option.opts, key=len)


# Option (its long name) -> the factory's declaration.
SHARED = {_long(o): o for o in map(_declared, [
    common.model_option(), common.weights_option(), common.device_option(), common.out_option("runs/x"),
    common.exist_ok_option(), common.quiet_option(), common.json_option("x"), common.data_option(),
    common.split_option(), *common.figure_options(), common.show_option(), *common.dtype_options()])}
RUN = {"--model", "--weights", "--device", "--out", "--exist-ok", "--quiet", "--json"}
DATASET = {"--data", "--split"}
# Offered by the commands that draw figures (--show also by detect/segment); checked for their meaning
# wherever they appear.
FIGURES = {"--style", "--marker-alpha", "--format", "--show"}
# The model's precision, offered (at least) by these commands; checked for its meaning wherever it appears.
DTYPE = {"--dtype", "--half"}
WITH_DTYPE = {"detect", "segment", "offsets", "rois", "receptive-field", "effective", "dilation-stats"}

# Commands that offer less than RUN, with what they offer and why (a command not listed needs all of RUN).
LESS = {
    "models": ({"--json"}, "lists the registry; runs no model"),
    "synth": ({"--quiet"} | DATASET, "writes a dataset; runs no model"),
    "convert": ({"--model", "--out", "--quiet"}, "converts a weights file; runs no model"),
    "train": ({"--model", "--device", "--out", "--quiet", "--json"} | DATASET,
              "trains from scratch (no --weights); resumes in its folder (no --exist-ok)"),
    "bench ops": ({"--device", "--json"}, "times the operators on random tensors"),
    "bench model": ({"--model", "--device", "--json"}, "times random weights"),
    "bench dataset": ({"--data", "--model", "--device", "--json"},
                      "times dilation-stats runs it starts itself (their folders are temporary)"),
}
# Commands that read a dataset (besides RUN).
WITH_DATASET = {"eval", "dilation-stats", "train", "synth"}
# --split defaults to common.DEFAULT_SPLIT except here (the help says why).
SPLIT_DEFAULT = {"train": "train"}


def _commands():
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        if isinstance(command, click.Group):
            sub_ctx = click.Context(command, parent=ctx)
            for sub in command.list_commands(sub_ctx):
                yield f"{name} {sub}", command.get_command(sub_ctx, sub)
        else:
            yield name, command


COMMANDS = dict(_commands())


def _shape(option: click.Option) -> tuple:
    """What makes an option mean the same: its flags, whether it takes a value, of which kind, how many."""
    return (sorted(option.opts), option.is_flag, option.multiple, option.nargs, type(option.type).__name__,
            option.metavar)


def test_the_walk_finds_every_command():
    assert {"detect", "segment", "eval", "train", "convert", "synth", "models", "bench ops", "bench model",
            "offsets", "rois", "receptive-field", "dilation-stats"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_options_mean_the_same_everywhere(name):
    command = COMMANDS[name]
    help_text = CliRunner().invoke(main, [*name.split(), "--help"], terminal_width=200).output
    options = {_long(p): p for p in command.params if isinstance(p, click.Option) and not p.hidden}
    offered = set(options) & set(SHARED)
    for long in offered:
        want, have = SHARED[long], options[long]
        assert _shape(have) == _shape(want), (name, long)
        assert ", ".join(sorted(want.opts, key=len)) in help_text, (name, long)  # e.g. "-m, --model"
    expected, _ = LESS.get(name, (RUN | (DATASET if name in WITH_DATASET else set()), ""))
    assert offered - FIGURES - DTYPE == expected, (name, sorted(expected - offered),
                                                   sorted(offered - FIGURES - DTYPE - expected))
    if name in WITH_DTYPE:
        assert DTYPE <= offered, name
    if "--split" in options:
        default = SPLIT_DEFAULT.get(name, common.DEFAULT_SPLIT)
        assert options["--split"].default == default
        if default != common.DEFAULT_SPLIT:
            assert common.DEFAULT_SPLIT in options["--split"].help  # says why it differs
    out = options.get("--out")
    if out is not None and out.default is not None and Path(out.default).parts[0] == "runs":
        assert Path(out.default) == Path("runs", name.split()[0]), name
    if "--device" in options:
        assert options["--device"].default in ("auto", "cpu")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_usage_errors_are_one_line(name):
    result = CliRunner().invoke(main, [*name.split(), "--no-such-option"])
    assert result.exit_code == 2
    assert result.output.splitlines() == ["Error: No such option '--no-such-option'."], result.output


def test_figure_commands_can_show():
    for name in ("offsets", "rois", "receptive-field", "effective", "detect", "segment"):
        assert "--show" in {_long(p) for p in COMMANDS[name].params}, name


def test_help_still_shows_the_usage():
    result = CliRunner().invoke(main, ["detect", "--help"])
    assert result.exit_code == 0 and result.output.startswith("Usage: ")
    result = CliRunner().invoke(main, [])
    assert "Commands:" in result.output and "Error" not in result.output
