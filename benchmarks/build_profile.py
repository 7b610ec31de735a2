"""Where the CPU time of `tfds build brain_tumor_mri` goes: each step over a Kaggle folder.

    python benchmarks/build_profile.py --data_dir=../shared/data/kaggle-brain-tumor-mri-native

Runs the steps of the build one after the other in this process, each over every file, and
reports their CPU seconds (CPU, not wall: the machine may be shared): listing, reading, hashing,
header check, decode check, PNG conversion, TFDS encoding and serialisation, shuffling (hashing
the keys, sorting) and TFRecord writing. Then Beam's costs that do not depend on the data: the
start-up of one process (imports; every Beam worker process pays it too) and a build of the
builder's dummy data with Beam in this process (pipeline translation and runner start). Takes
about a minute on the native copy. The last line printed is one JSON object of the figures.
"""

import hashlib
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from absl import flags, logging

from mri_tfdata.cli import runner

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Kaggle-layout folder (Training/ and Testing/).")

REPO = pathlib.Path(__file__).resolve().parents[1]
DUMMY_DATA = REPO / "builders/brain_tumor_mri/dummy_data"


def _cpu(step, items) -> tuple[list, float]:
    """Applies `step` to every item; returns the results and the CPU seconds it took."""
    start = time.process_time()
    results = [step(item) for item in items]
    return results, time.process_time() - start


def _startup_cpu() -> float:
    """CPU seconds of a new Python process importing what the build and its workers import."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import apache_beam, tensorflow_datasets, "
                    "mri_tfdata.data.beam_steps"], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _beam_fixed_cpu(builder_cls, tmp: pathlib.Path) -> float:
    """CPU seconds of a Beam build of the 21 dummy images in this process: Beam's fixed cost."""
    import apache_beam as beam
    import tensorflow_datasets as tfds

    # The FnApiRunner named directly: the DirectRunner would first try to download Prism.
    options = beam.options.pipeline_options.PipelineOptions(
        runner="apache_beam.runners.portability.fn_api_runner.FnApiRunner")
    builder = builder_cls(data_dir=str(tmp / "dummy"), config="default")
    start = time.process_time()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(DUMMY_DATA), beam_options=options))
    return time.process_time() - start


def _profile(data_dir: str, tmp: pathlib.Path) -> dict:
    import tensorflow as tf
    from tensorflow_datasets.core import example_serializer, hashing

    from builders.brain_tumor_mri import brain_tumor_mri_dataset_builder
    from mri_tfdata.data import images, kaggle_layout

    cpu = {}
    start = time.process_time()
    split_dirs = kaggle_layout.find_split_dirs(data_dir)
    files = [f for split in split_dirs.values() for f in kaggle_layout.list_examples(split)]
    cpu["listing"] = time.process_time() - start
    data, cpu["read"] = _cpu(lambda f: images.read_file(f.path), files)
    _, cpu["sha256"] = _cpu(lambda d: hashlib.sha256(d).hexdigest(), data)
    _, cpu["header_check"] = _cpu(images.check_header, data)
    # What prepare_image does after the header: keep and decode once, or convert to PNG.
    stored, _ = _cpu(lambda d: images.prepare_image(d, verify=False), data)
    kept = [d for d, s in zip(data, stored) if not s.reencoded]
    _, cpu["decode_check"] = _cpu(images.check_decodes, kept)
    converted = [d for d, s in zip(data, stored) if s.reencoded]
    _, cpu["png_conversion"] = _cpu(lambda d: images.prepare_image(d, verify=False), converted)

    builder_cls = brain_tumor_mri_dataset_builder.Builder
    features = builder_cls(data_dir=str(tmp / "info")).info.features
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    examples = [{"image": s.data, "label": f.label, "filename": f.relpath, "sha256": s.sha256}
                for f, s in zip(files, stored)]
    records, cpu["encode_serialize"] = _cpu(
        lambda ex: serializer.serialize_example(features.encode_example(ex)), examples)
    start = time.process_time()
    hasher = hashing.Hasher("train")
    shuffled = sorted(zip((hasher.hash_key(f.relpath) for f in files), records))
    cpu["shuffle"] = time.process_time() - start
    start = time.process_time()
    with tf.io.TFRecordWriter(str(tmp / "all.tfrecord")) as writer:
        for _, record in shuffled:
            writer.write(record)
    cpu["tfrecord_write"] = time.process_time() - start
    cpu = {step: round(seconds, 2) for step, seconds in cpu.items()}
    return {"files": len(files), "converted_to_png": len(converted), "cpu_s": cpu,
            "steps_total_cpu_s": round(sum(cpu.values()), 1),
            "process_startup_cpu_s": round(_startup_cpu(), 1),
            "beam_fixed_cpu_s": round(_beam_fixed_cpu(builder_cls, tmp), 1)}


def main(argv: list[str]) -> None:
    del argv
    runner.require(FLAGS.data_dir is not None and pathlib.Path(FLAGS.data_dir).is_dir(),
                "--data_dir must be a Kaggle-layout folder (Training/ and Testing/).")
    with tempfile.TemporaryDirectory(prefix="mri_tfdata-build-profile-") as tmp:
        result = _profile(FLAGS.data_dir, pathlib.Path(tmp))
    print(f"{result['files']} files, {result['converted_to_png']} converted to PNG")
    for step, seconds in result["cpu_s"].items():
        print(f"{step:18s} {seconds:7.2f} s CPU")
    print(json.dumps(result))


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    runner.run(main)
