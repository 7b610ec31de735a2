"""Fast tests of mri_tfdata.cli.runner in-process: help requests, require, the one-paragraph error."""

import types

import pytest

from mri_tfdata.cli import runner
from mri_tfdata.core.errors import ParameterError


@pytest.mark.parametrize("argv, wanted", [
    (["prog", "--help"], "short"), (["prog", "-h"], "short"), (["prog", "-?"], "short"),
    (["prog", "--helpshort"], "short"), (["prog", "--helpfull"], "full"),
    (["prog", "--help=false"], None), (["prog", "--helpfull=0"], None),
    (["prog", "--epochs=3"], None), (["prog", "--", "--help"], None), (["prog", "help"], None),
])
def test_help_request_reads_every_spelling_and_stops_at_the_double_dash(argv, wanted):
    assert runner.help_request(argv) == wanted


def test_require_raises_a_flag_error_only_when_the_condition_fails():
    runner.require(True, "never raised")
    with pytest.raises(ParameterError, match="--epochs=0 must be at least 1"):
        runner.require(False, "--epochs=0 must be at least 1")


def test_help_prints_the_usage_paragraph_and_exits_0(capsys):
    module = types.ModuleType("fake_command", "Does one thing.\n\nMore details.")
    with pytest.raises(SystemExit) as exit_info:
        runner.parse_flags(["prog", "--help"], module)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Does one thing.\n") and "More details" not in out
    assert "--flagfile" in out and "--helpfull lists every flag" in out
