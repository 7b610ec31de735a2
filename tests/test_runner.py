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


LONG_HELP = ("Backbone weights: imagenet (Keras download/cache), none (random), or the path of a "
             "ResNet50 no-top .h5 file; the rest is for --helpfull.")


def test_help_lines_wrap_whole_words_and_never_cut_the_text():
    line = runner._one_line("weights", "imagenet", LONG_HELP, 80)
    assert "…" not in line and all(len(row) <= 80 for row in line.splitlines())
    assert len(line.splitlines()) > 1
    # Every word of the first sentence is there, in order, and nothing of the second.
    assert " ".join(line.split()[1:]) == LONG_HELP.split(";")[0]
    rows = line.splitlines()
    assert all(row.startswith(" " * 32) and not row[32].isspace() for row in rows[1:])


@pytest.mark.parametrize("text, first", [
    ("Examples in the shuffle buffer (training split; a file cache shuffles all). More.",
     "Examples in the shuffle buffer (training split; a file cache shuffles all)"),
    ("Hidden sizes, e.g. 512,128. Details.", "Hidden sizes, e.g. 512,128"),
    ("One sentence only.", "One sentence only"),
    ("Schedule: constant; cosine (to 0); step.", "Schedule: constant"),
])
def test_the_first_sentence_never_ends_inside_parentheses(text, first):
    assert runner.first_sentence(text) == first


def test_path_flags_expand_the_home_folder_and_variables(monkeypatch, tmp_path):
    from absl import flags

    from mri_tfdata.cli import shared_flags

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUNS", "/srv/runs")
    values = flags.FlagValues()
    for name in ("data_dir", "workdir", "cache", "out"):
        shared_flags.define_path(name, None, "", flag_values=values)
    values(["prog", "--data_dir=~/tensorflow_datasets", "--workdir=$RUNS/demo", "--cache=memory"])
    assert values.data_dir == f"{tmp_path}/tensorflow_datasets"
    assert values.workdir == "/srv/runs/demo"
    assert values.cache == "memory" and values.out is None
    # Listed under the module that defined them, as --help groups them.
    assert {f.name for f in values.get_flags_for_module(__name__)} == {
        "data_dir", "workdir", "cache", "out"}


def test_an_unset_variable_in_a_path_flag_is_a_usage_error_naming_flag_and_variable(
        monkeypatch, tmp_path, capsys):
    from absl import flags

    from mri_tfdata.cli import shared_flags

    monkeypatch.setenv("RUNS", str(tmp_path))
    monkeypatch.delenv("NO_SUCH_RUNS_DIR", raising=False)
    values = flags.FlagValues()
    shared_flags.define_path("workdir", None, "", flag_values=values)
    monkeypatch.setattr(runner, "FLAGS", values)
    # Set, ${braced} or bare: expanded.
    runner.parse_flags(["prog", "--workdir=${RUNS}/a/$RUNS"])
    assert values.workdir == f"{tmp_path}/a/{tmp_path}"
    for spelling in ("$NO_SUCH_RUNS_DIR/demo", "${NO_SUCH_RUNS_DIR}/demo"):
        with pytest.raises(SystemExit) as exit:
            runner.parse_flags(["prog", f"--workdir={spelling}"])
        err = " ".join(capsys.readouterr().err.split())
        assert exit.value.code == 2, err
        assert err.startswith("error: ") and "Traceback" not in err
        assert f"--workdir={spelling}" in err and "$NO_SUCH_RUNS_DIR is not set" in err, err


def test_a_mistyped_flag_is_one_sentence_suggesting_the_flag(monkeypatch, capsys):
    from absl import flags

    values = flags.FlagValues()
    flags.DEFINE_integer("epochs", 10, "", flag_values=values)
    monkeypatch.setattr(runner, "FLAGS", values)
    with pytest.raises(SystemExit) as exit:
        runner.parse_flags(["prog", "--epochz=3"])
    err = " ".join(capsys.readouterr().err.split())
    assert exit.value.code == 2
    assert err == ("error: Unknown command line flag 'epochz'. Did you mean --epochs? Run with "
                   "--helpfull to list the flags and their accepted values."), err
