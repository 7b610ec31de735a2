"""Times `tfds build` of brain_tumor_mri: the plain builder against the Beam builder, one run.

    python benchmarks/build_speed.py --data_dir=../shared/data/kaggle-brain-tumor-mri-native \
        [--config=default|dedup]

Builds the same Kaggle folder three times, back to back, each with the `tfds` command in a fresh
process (so each pays its own start-up, as a user does): (1) plain: the builder as it was before
it used Apache Beam (extracted from git at --plain_commit), one Python process; (2) beam_default:
the current builder without --beam_pipeline_options (Beam's in-process runner); (3) beam_multi:
the current builder with --beam_pipeline_options (default: the DirectRunner on every core).
Then checks that the three datasets hold the same examples (key, label, sha256, image bytes) and
metadata. Takes 5 to 10 minutes on either copy on 2 shared cores. The last line printed is one
JSON object: wall and CPU seconds of each build, the speed-ups over plain, the load average before
and after (the machine may be shared: run it several times and take the median).
"""

import hashlib
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from absl import flags, logging

from mri_tfdata.cli import runner
from mri_tfdata.core.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Kaggle-layout folder (Training/ and Testing/), the "
                    "manual_dir of the builds.")
flags.DEFINE_enum("config", "default", ["default", "dedup"], "Builder config to build.")
flags.DEFINE_string("plain_commit", "343f735",
                    "Git commit holding the last builder without Beam (the plain build).")
flags.DEFINE_string("beam_pipeline_options",
                    "runner=DirectRunner,direct_num_workers=0,direct_running_mode=multi_processing",
                    "--beam_pipeline_options of the beam_multi build.")

REPO = pathlib.Path(__file__).resolve().parents[1]
BUILDER = "builders/brain_tumor_mri"


def _plain_builder(folder: pathlib.Path) -> pathlib.Path:
    """Writes the builder of --plain_commit into folder/brain_tumor_mri/ and returns that."""
    builder_dir = folder / "brain_tumor_mri"
    builder_dir.mkdir()
    for name in ("__init__.py", "brain_tumor_mri_dataset_builder.py"):
        try:
            source = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{FLAGS.plain_commit}:{BUILDER}/{name}"],
                capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise UserError(f"Cannot read {BUILDER}/{name} at --plain_commit="
                                f"{FLAGS.plain_commit} from the git repository {REPO} ({e}); "
                                "run from a git clone, or pass a commit that has it.") from None
        (builder_dir / name).write_text(source)
    return builder_dir


def _build(builder_dir: pathlib.Path, data_dir: pathlib.Path, options: str | None) -> dict:
    """Runs `tfds build` once; returns its wall and CPU seconds (its worker processes' included)."""
    command = [str(pathlib.Path(sys.executable).with_name("tfds")), "build", str(builder_dir),
               f"--manual_dir={FLAGS.data_dir}", f"--data_dir={data_dir}",
               f"--config={FLAGS.config}"]
    if options:
        command.append(f"--beam_pipeline_options={options}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def _contents(data_dir: pathlib.Path) -> tuple[dict, dict]:
    """({split: {key: (label, sha256, image digest)}}, metadata) of a built dataset."""
    import tensorflow_datasets as tfds

    # The one version folder each build wrote: the plain builder's version may be older.
    (version_dir,) = (data_dir / "brain_tumor_mri" / FLAGS.config).iterdir()
    builder = tfds.builder_from_directory(str(version_dir))
    splits = {}
    for split in builder.info.splits:
        dataset = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        splits[split] = {
            ex["filename"].decode(): (int(ex["label"]), ex["sha256"].decode(),
                                      hashlib.sha256(ex["image"]).hexdigest())
            for ex in tfds.as_numpy(dataset)}
    return splits, dict(builder.info.metadata)


def _warm_page_cache(folder: str) -> None:
    # The first build would otherwise be the only one reading the images from disk.
    for path in pathlib.Path(folder).rglob("*"):
        if path.is_file():
            path.read_bytes()


def main(argv: list[str]) -> None:
    del argv
    runner.require(FLAGS.data_dir is not None and pathlib.Path(FLAGS.data_dir).is_dir(),
                "--data_dir must be a Kaggle-layout folder (Training/ and Testing/).")
    _warm_page_cache(FLAGS.data_dir)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mri_tfdata-build-speed-") as tmp:
        tmp = pathlib.Path(tmp)
        builds = {"plain": (_plain_builder(tmp), None),
                  "beam_default": (REPO / BUILDER, None),
                  "beam_multi": (REPO / BUILDER, FLAGS.beam_pipeline_options)}
        times = {name: _build(builder_dir, tmp / name, options)
                 for name, (builder_dir, options) in builds.items()}
        load_after = os.getloadavg()
        contents = {name: _contents(tmp / name) for name in builds}
    plain_splits, plain_metadata = contents["plain"]
    for name, (splits, metadata) in contents.items():
        if splits != plain_splits or metadata != plain_metadata:
            sys.exit(f"The {name} build differs from the plain build: "
                     f"{ {s: len(e) for s, e in splits.items()} } examples, metadata {metadata}; "
                     f"plain: { {s: len(e) for s, e in plain_splits.items()} }, {plain_metadata}.")
    plain_s = times["plain"]["wall_s"]
    print(json.dumps({
        "data_dir": FLAGS.data_dir, "config": FLAGS.config,
        **{f"{name}_{key}": value for name, t in times.items() for key, value in t.items()},
        "multi_speedup": round(plain_s / times["beam_multi"]["wall_s"], 2),
        "default_speedup": round(plain_s / times["beam_default"]["wall_s"], 2),
        "examples": {split: len(examples) for split, examples in plain_splits.items()},
        "identical": True, "metadata": plain_metadata,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after]}))


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    runner.run(main)
