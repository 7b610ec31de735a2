"""The shipped flagfiles work from a fresh clone: their flags parse and their data source resolves
(or the one-paragraph 'not built' / 'give --data_dir' message appears), their comments cite what
exists, and they hold no path of the machine they were written on."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
FLAGFILES = sorted((ROOT / "configs").glob("*.flags"))
# "# Command:  python -m MODULE --flagfile=configs/NAME.flags [more flags]"
COMMAND = re.compile(r"^# Command:\s+python -m ([\w.]+) --flagfile=(configs/[\w.]+\.flags)(.*)$",
                     re.M)

# Runs the command's own flag checks and opens its training split, nothing more: the first step
# of the real run, as the command's main would take it.
_FIRST_STEP = """
import sys
from absl import flags
from mri_tfdata.cli import runner, shared_flags
module_name = sys.argv.pop(1)
import importlib
command = importlib.import_module(module_name)
FLAGS = flags.FLAGS

def first_step(argv):
    data = shared_flags.data_spec_from_flags()
    model_spec = shared_flags.model_spec_from_flags()
    if module_name == "tuning.search":
        command._validate_flags(model_spec)
    else:
        command._train_config()
    source = data.open(FLAGS.train_split)
    print("resolved", source.num_examples, flush=True)

first_step.__module__ = module_name
runner.run(first_step)
"""


def test_every_shipped_flagfile_names_its_command():
    assert {path.name for path in FLAGFILES} >= {"demo.flags", "kaggle.flags", "reference.flags",
                                                 "tune.flags"}
    for path in FLAGFILES:
        match = COMMAND.search(path.read_text())
        assert match and match.group(2) == f"configs/{path.name}", path


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.name)
def test_a_flagfile_cites_only_what_exists_and_holds_no_machine_paths(path):
    text = path.read_text()
    for script in re.findall(r"benchmarks/[\w/]+\.py", text):
        assert (ROOT / script).is_file(), script
    # A heading cited as (benchmarks/README.md, "Heading"), possibly across a line break.
    flat = " ".join(line.lstrip("# ") for line in text.splitlines())
    for readme, heading in re.findall(r"([\w/]*README\.md),\s+\"([^\"]+)\"", flat):
        headings = re.findall(r"^#+\s+(.*)$", (ROOT / readme).read_text(), re.M)
        assert heading in headings, (readme, heading)
    for line in text.splitlines():
        if line.startswith("--"):
            value = line.partition("=")[2]
            assert not value.startswith(("/", "~")) and "$" not in value, line


def _fresh_clone(tmp_path: pathlib.Path) -> pathlib.Path:
    """The repository's tracked files, copied as a clone would have them."""
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if name.startswith(("mri_tfdata/", "tuning/", "builders/", "configs/")):
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    return clone


# What the first step of each flagfile ends in, from a fresh clone with an empty HOME.
EXPECTED = {
    "demo.flags": (0, r"resolved \d+"),  # the synthetic set is generated on first use
    "kaggle.flags": (1, r"brain_tumor_mri/dedup is not built in {home}/tensorflow_datasets\. "
                        r"Build it with `mri-build --config=dedup --manual_dir=DIR`"),
    "reference.flags": (1, r"brain_tumor_mri/default is not built in {home}/tensorflow_datasets"),
    "tune.flags": (2, r"--source=folder needs --data_dir=DIR"),
}


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.name)
def test_a_flagfile_runs_its_first_step_from_a_fresh_clone(tmp_path, path):
    clone = _fresh_clone(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TFDS_", "XDG_", "KERAS"))}
    env.update(HOME=str(home), PYTHONPATH=str(clone))
    module, flagfile, _ = COMMAND.search(path.read_text()).groups()
    proc = subprocess.run([sys.executable, "-c", _FIRST_STEP, module, f"--flagfile={flagfile}"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    code, pattern = EXPECTED[path.name]
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == code, output[-3000:]
    assert re.search(pattern.format(home=re.escape(str(home))), output), output[-3000:]
    assert "Traceback" not in output
