"""Tests of the commands' surface: --help on one screen, console scripts, quiet start-up, flagfiles."""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags

from mri_tfdata.cli import shared_flags

ROOT = pathlib.Path(__file__).parents[1]
# The C++ start-up block TensorFlow prints (twice) on import, and the CUDA probe without a GPU.
NOISE = re.compile(r"oneDNN custom operations|Could not find cuda drivers|cpu_feature_guard"
                   r"|absl::InitializeLog|cuInit")


def _run(*args, env=None):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          env=env)
    return proc.returncode, proc.stdout, proc.stderr


def _console_script(module: str, *args) -> list[str]:
    """What the `mri-*` wrapper pip generates runs: the module's console_main, argv[0] the script."""
    return ["-c", f"import sys; sys.argv = {['/venv/bin/mri-command', *args]!r}; "
                  f"from {module} import console_main; console_main()"]


@pytest.mark.integration
def test_train_help_fits_one_screen_and_shows_the_data_and_model_flags():
    code, out, err = _run("-m", "mri_tfdata.train", "--help")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) <= 50, out
    assert lines[0].startswith("Trains the classifier: `mri-train --flagfile=")
    for flag in ("source", "data_dir", "tfds_data_dir", "weights", "image_size", "batch_size",
                 "head_units", "workdir", "epochs", "precision", "flagfile", "verbosity"):
        assert sum(line.startswith(f"  --{flag}") for line in lines) == 1, flag
    # The same screen from the console script (absl's own --help would list no flag there).
    code, script_out, err = _run(*_console_script("mri_tfdata.train", "-h"))
    assert code == 0 and err == "" and script_out == out


@pytest.mark.integration
def test_helpfull_lists_every_flag_with_its_whole_help():
    code, out, err = _run("-m", "mri_tfdata.train", "--helpfull")
    assert code == 0 and err == ""
    assert "--shuffle_buffer:" in out and "--[no]logtostderr:" in out  # ours and absl's
    text = " ".join(out.split())
    assert "the head on them when the backbone stays frozen and --augment is off" in text


@pytest.mark.integration
@pytest.mark.parametrize("module, flag", [("mri_tfdata.predict", "--output"),
                                          ("mri_tfdata.export", "--out"),
                                          ("mri_tfdata.evaluate", "--split"),
                                          ("mri_tfdata.show_batch", "--data_dir"),
                                          ("tuning.search", "--max_trials")])
def test_every_command_answers_help_with_exit_0(module, flag):
    code, out, err = _run(*_console_script(module, "--help"))
    assert code == 0 and err == "", err[-2000:]
    assert f"  {flag}" in out and "  --flagfile" in out and len(out.splitlines()) <= 50


def test_console_scripts_point_at_console_main():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"mri-train", "mri-evaluate", "mri-predict", "mri-export", "mri-tune",
                            "mri-show-batch", "mri-build"}
    for target in scripts.values():
        module, function = target.split(":")
        path = ROOT / (module.replace(".", "/") + ".py")
        defined = {node.name for node in ast.parse(path.read_text()).body
                   if isinstance(node, ast.FunctionDef)}
        assert function == "console_main" and function in defined, target


@pytest.mark.integration
def test_commands_start_quietly_unless_verbosity_asks(tmp_path):
    # predict imports TensorFlow, then refuses the missing model: stderr is that one paragraph.
    args = ["-m", "mri_tfdata.predict", f"--model={tmp_path / 'nope.keras'}", "x.jpg"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code, _, err = _run(*args, env=env)
    assert code == 1 and err.startswith("error: --model=") and err.count("\n") <= 3, err
    assert not NOISE.search(err)
    code, _, loud = _run(*args, "--verbosity=1", env=env)
    if not NOISE.search(loud):
        pytest.skip("TensorFlow prints no start-up lines on this machine: nothing to hide")
    assert code == 1 and "error: --model=" in loud


def test_flagfiles_store_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = flags.FlagValues()
    for name, value in [("data_dir", "data"), ("tfds_data_dir", "gs://bucket/tfds"),
                        ("workdir", "~/runs/x"), ("cache", "memory"), ("feature_cache", "feats"),
                        ("weights", "imagenet"), ("train_split", "train")]:
        flags.DEFINE_string(name, value, "", flag_values=values)
    values(["prog"])
    lines = {name: shared_flags.serialize(values[name]) for name in values}
    assert lines == {"data_dir": f"--data_dir={tmp_path / 'data'}",
                     "tfds_data_dir": "--tfds_data_dir=gs://bucket/tfds",
                     "workdir": f"--workdir={pathlib.Path.home() / 'runs/x'}",
                     "cache": "--cache=memory", "feature_cache": f"--feature_cache={tmp_path}/feats",
                     "weights": "--weights=imagenet", "train_split": "--train_split=train"}


def test_library_errors_name_parameters_and_commands_restate_them_as_flags():
    from mri_tfdata.cli import runner
    from mri_tfdata.core.errors import ParameterError, UserError

    error = UserError(
        "{global_batch_size} and {cache} ({why!s}); pass {allow_missing_classes:True}, "
        "{cache_dir:None}, {tpu:NAME} or {seed:3}; {{literal}} {model_path!n}.",
        global_batch_size=30, cache=pathlib.Path("/a b"), why="{not a field}")
    assert str(error) == ("global_batch_size=30 and cache='/a b' ({not a field}); pass "
                          "allow_missing_classes=True, cache_dir=None, tpu=NAME or seed=3; "
                          "{literal} model_path.")
    command = flags.FlagValues()
    for name in ("batch_size", "cache", "feature_cache", "tpu", "model"):
        flags.DEFINE_string(name, None, "", flag_values=command)
    flags.DEFINE_bool("allow_missing_classes", False, "", flag_values=command)
    restated = runner.in_flag_terms(error, command)
    # seed is no flag of this command: it keeps its Python spelling.
    assert str(restated) == ("--batch_size=30 and --cache='/a b' ({not a field}); pass "
                             "--allow_missing_classes, --feature_cache=off, --tpu=NAME or seed=3; "
                             "{literal} --model.")
    assert restated.exit_code == 1
    assert runner.in_flag_terms(ParameterError("{seed} <0", seed=-1), command).exit_code == 2
    plain = UserError("no {fields} here")
    assert str(runner.in_flag_terms(plain, command)) == "no {fields} here"
    # A plain message's name=value phrases are restated too, for the command's flags only.
    plain = UserError("tpu='x' failed; seed=3 is fine")
    assert str(runner.in_flag_terms(plain, command)) == "--tpu=x failed; seed=3 is fine"
    renamed = UserError("pass {data_dir:'x'}", data_dir=None).renamed(
        data_dir="tfds_data_dir", also="Or {source:'folder'}.")
    assert str(renamed) == "pass tfds_data_dir='x' Or source='folder'."
    with pytest.raises(ValueError, match="takes !s or !n"):
        UserError("{seed!r}", seed=1)


COMMANDS = ("mri_tfdata.train", "mri_tfdata.evaluate", "mri_tfdata.predict", "mri_tfdata.export",
            "mri_tfdata.show_batch", "mri_tfdata.synthetic", "tuning.search")
# What `python -X importtime` prints for a module loaded by the process.
HEAVY_IMPORT = re.compile(
    r"^import time:.*\|\s+(tensorflow|keras|tensorflow_datasets|keras_tuner|matplotlib)$", re.M)


@pytest.mark.parametrize("module", COMMANDS)
def test_help_and_flag_errors_answer_without_importing_tensorflow(module):
    code, out, err = _run("-X", "importtime", "-m", module, "--help")
    assert code == 0 and "  --flagfile" in out, err[-2000:]
    assert "…" not in out  # help lines wrap, never cut
    assert not HEAVY_IMPORT.findall(err), HEAVY_IMPORT.findall(err)
    code, _, err = _run("-X", "importtime", "-m", module, "--no_such_flag=1")
    assert code == 2 and "error: Unknown command line flag 'no_such_flag'" in err
    assert not HEAVY_IMPORT.findall(err), HEAVY_IMPORT.findall(err)


def test_console_scripts_parse_help_without_importing_tensorflow():
    for module in COMMANDS:
        if module == "mri_tfdata.synthetic":
            continue  # no console script
        script = _console_script(module, "--help")
        code, out, err = _run("-c", script[1].replace(
            "console_main()", "\ntry:\n    console_main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'keras_tuner', 'matplotlib', "
            "'tensorflow_datasets') if m in sys.modules]\nprint('HEAVY', heavy)"))
        assert code == 0 and "HEAVY []" in out, (module, out[-500:], err[-2000:])


def test_help_shows_whole_first_sentences():
    code, out, _ = _run("-m", "mri_tfdata.train", "--help")
    text = " ".join(out.split())
    assert code == 0 and "…" not in out
    assert "Examples in the training split's shuffle buffer --seed" in text
    assert "none (random) or a ResNet50 .h5 file --head_units" in text
    # Each choice of --source with its meaning, not only the first.
    assert ("<tfds|folder|synthetic>: A brain_tumor_mri TFDS build, a Kaggle-layout folder "
            "(--data_dir) or the generated set (no download) --data_dir" in text)


@pytest.mark.parametrize("flagfile", ["configs/missing.flags", "~/missing.flags"])
def test_a_missing_flagfile_is_one_paragraph_naming_the_file_and_the_fix(tmp_path, flagfile):
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "mri_tfdata.train", f"--flagfile={flagfile}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    err = " ".join(proc.stderr.split())
    expanded = flagfile.replace("~", str(tmp_path))
    assert proc.returncode == 2 and err.startswith("error: --flagfile="), err
    assert f"--flagfile={expanded}: no such file or directory" in err
    assert "Pass the path of an existing flags file" in err
    assert "ERROR::" not in err and "Traceback" not in err and "\n\n" not in proc.stderr


# Every flag naming a file or folder, in any command.
PATH_FLAGS = {"data_dir", "tfds_data_dir", "workdir", "cache", "feature_cache", "weights",
              "model", "out", "output", "gradcam", "directory"}
_PATH_FLAG_PARSERS = """
import json, sys
from absl import flags
import importlib
module = importlib.import_module(sys.argv[1])
getattr(module, "_define_flags", lambda: None)()
print(json.dumps({f.name: type(f.parser).__name__ for f in flags.FLAGS.flags_by_module_dict().get(
    module.__name__, []) + flags.FLAGS.get_flags_for_module("mri_tfdata.cli.shared_flags")}))
"""


@pytest.mark.parametrize("module", COMMANDS)
def test_every_path_flag_expands_the_home_folder_and_variables(module):
    code, out, err = _run("-c", _PATH_FLAG_PARSERS, module)
    assert code == 0, err[-2000:]
    parsers = json.loads(out.splitlines()[-1])
    paths = {name: parser for name, parser in parsers.items() if name in PATH_FLAGS}
    assert paths and set(paths.values()) == {"PathParser"}, paths


def test_mri_build_expands_the_home_folder_and_variables_in_tfds_builds_folder_flags(
        monkeypatch, tmp_path):
    # `tfds build --data_dir=~/x` writes part of the build into a folder literally named "~".
    from mri_tfdata import build
    from mri_tfdata.core.errors import ParameterError

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE", "/srv/kaggle")
    monkeypatch.delenv("NO_SUCH_TFDS_DIR", raising=False)
    argv = build.tfds_argv(["mri-build", "--manual_dir=$KAGGLE/native", "--data_dir=~/tfds",
                            "--config=dedup", "--overwrite", "-h"])
    assert argv == ["tfds", "build", str(ROOT / "builders" / "brain_tumor_mri"),
                    "--manual_dir=/srv/kaggle/native", f"--data_dir={tmp_path}/tfds",
                    "--config=dedup", "--overwrite", "--help"]
    assert (ROOT / "builders" / "brain_tumor_mri" / "brain_tumor_mri_dataset_builder.py").is_file()
    with pytest.raises(ParameterError, match=r"--data_dir=\$NO_SUCH_TFDS_DIR/x: the environment "
                                             r"variable \$NO_SUCH_TFDS_DIR is not set"):
        build.tfds_argv(["mri-build", "--data_dir=$NO_SUCH_TFDS_DIR/x"])


_ENDING = """
import atexit, sys
from absl import logging
from mri_tfdata.cli import runner

def main(argv):
    atexit.register(lambda: print("TEARDOWN", flush=True))
    sys.stdout.write("printed, not flushed")
    logging.warning("logged last")
    return int(sys.argv[1])

runner.run(main)
"""


@pytest.mark.parametrize("status", [0, 3])
def test_a_command_ends_without_teardown_and_loses_no_output(status):
    code, out, err = _run("-c", _ENDING, str(status))
    assert code == status
    assert out == "printed, not flushed" and "logged last" in err


def test_a_multi_worker_command_ends_through_the_normal_teardown():
    env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {}, "task": {}})}
    code, out, err = _run("-c", _ENDING, "0", env=env)
    assert code == 0 and "logged last" in err
    assert out == "printed, not flushedTEARDOWN\n"
