"""`kdpipe --help` and every command's help: fast to print, and prose without typer's artefacts."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from kdpipe.cli import app

from .conftest import fresh_python

runner = CliRunner()
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def help_text(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_covered():
    assert set(COMMANDS) >= {"train", "distill", "sweep", "eval", "export", "bench", "deploy",
                             "list", "pipeline"}


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["kdpipe", *COMMANDS])
def test_help_reads_as_prose(command):
    text = help_text(*command)
    assert "<bool>" not in text  # a flag takes no value; `--help` included
    assert not re.search(r"\{[a-z_]+\}", text), text  # usage: CHECKPOINT, not {checkpoint}
    assert "|---|" not in text and "| target |" not in text  # no raw Markdown table
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage


def test_brackets_in_help_texts_are_not_taken_for_markup():
    assert "kdpipe[ray]" in help_text("sweep")  # the --executor help names the extra
    text = " ".join(help_text("train").replace("│", " ").split())  # help wraps in a panel
    assert "[default: ../shared/datasets/cifar10-images.tar.gz if present]" in text


def test_export_help_ends_with_the_targets_table():
    text = help_text("export")
    table = text[text.index("Targets and their --quantize values"):]
    for name in ("onnx", "executorch", "coreml", "torchscript"):
        assert re.search(rf"^ ?{name} ", table, re.MULTILINE), table
    assert "kdpipe[executorch]" in table


def test_arguments_are_named_in_capitals_in_usage():
    assert "Usage: kdpipe export [OPTIONS] CHECKPOINT" in help_text("export")
    assert "Usage: kdpipe bench [OPTIONS] ARTIFACTS..." in help_text("bench")
    assert "Usage: kdpipe pipeline [OPTIONS] [CONFIG]" in help_text("pipeline")


@pytest.mark.parametrize("command", ["eval", "deploy", "export", "bench", "train"])
def test_every_stage_takes_a_config_file(command):
    assert "--config" in help_text(command)


def test_verbose_is_a_global_option():
    text = help_text()
    assert "--verbose" in text and "-v" in text


def test_help_imports_neither_torch_nor_the_optional_exporters():
    """`kdpipe --help` builds every command's flags without PyTorch (about 0.5 s, not 5)."""
    code = ("import sys\n"
            "import kdpipe.cli\n"
            "heavy = [m for m in ('torch', 'torchvision', 'coremltools', 'executorch',\n"
            "                     'onnxruntime',\n"
            "                     'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "import kdpipe.train.config, kdpipe.export.config, kdpipe.bench.config\n")
    fresh_python(code)


def test_stage_configs_import_without_torch():
    """What the CLI needs to build the flags of train, export and bench loads no PyTorch."""
    code = ("import sys\n"
            "import kdpipe.train, kdpipe.train.config, kdpipe.export.config, kdpipe.bench.config\n"
            "import kdpipe.cliutil, kdpipe.quiet\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    fresh_python(code)


def test_deploy_without_an_out_folder_says_how_to_give_one(tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text('out = "app"\n', encoding="utf-8")
    result = runner.invoke(app, ["deploy", str(tmp_path / "model.onnx")])
    assert result.exit_code == 2 and "error: deploy needs --out" in result.output
    result = runner.invoke(app, ["deploy", str(tmp_path / "model.onnx"), "--config", str(config)])
    assert "needs --out" not in result.output  # the file gave it: on to the (missing) artifact
    assert result.exit_code != 0 and "model.onnx" in result.output


def test_help_paragraphs_are_wrapped_once_and_examples_keep_their_lines():
    from kdpipe.cliutil import prose

    doc = """First line.

    A paragraph written
    over two lines.

        an example
        of two lines
    """
    assert prose(doc) == ("First line.\n\nA paragraph written over two lines.\n\n"
                          "    an example\n    of two lines")
    text = runner.invoke(app, ["distill", "--help"], terminal_width=80).output
    assert "(quantization-aware distillation), then export it with --quantize int8:" in text
