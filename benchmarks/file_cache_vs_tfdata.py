"""The hand-written file cache (--cache=DIR) against tf.data's Dataset.save/load and snapshot.

    python benchmarks/file_cache_vs_tfdata.py [--data_dir=NATIVE/Training/..] [--max_images=0]

On the training images of --data_dir at --image_size (decoded and resized as the input pipeline
does), for each of the three caches: the cold epoch (decode and write, then one epoch of batches
of 32 delivered), the warm epoch (a new pipeline reading the cache), and its size on disk. Then
what a kill while writing leaves: a child process writes the cache and SIGKILLs itself after
--kill_after decoded images; a second child reads with the same method and reports "error" (it
raises), "partial k/n" (reads fewer images without complaint), "rebuilt" (decodes again and
delivers all) or "complete". Prints a table and, last, one JSON object.
"""

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

import tensorflow as tf
from absl import app, flags

from mri_tfdata.data import input_pipeline, sources
from mri_tfdata.data.decoding import decode_and_resize

flags.DEFINE_string("data_dir", "/work/shared/data/kaggle-brain-tumor-mri-native",
                    "Kaggle-layout root; its Training/ images are used.")
flags.DEFINE_integer("image_size", 128, "Image side.")
flags.DEFINE_integer("max_images", 0, "Use only the first N training images (0 = all).")
flags.DEFINE_integer("kill_after", 500, "Decoded images after which the writer kills itself.")
flags.DEFINE_enum("child", None, ["write", "read"], "Internal: the kill experiment's children.")
flags.DEFINE_string("method", None, "Internal: the child's method.")
flags.DEFINE_string("path", None, "Internal: the child's cache path.")
FLAGS = flags.FLAGS
METHODS = ("file_cache", "save_load", "snapshot")
BATCH = 32


def _source():
    source = sources.load_folder_source(FLAGS.data_dir, split="train")
    if FLAGS.max_images:
        source = dataclasses.replace(source, dataset=source.dataset.take(FLAGS.max_images),
                                     num_examples=min(FLAGS.max_images, source.num_examples))
    return source


def _counted(source, kill_after: int = 0):
    """The source with every element counted (and SIGKILL after `kill_after`, if > 0)."""
    count = [0]

    def tick(encoded):
        count[0] += 1
        if kill_after and count[0] >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return encoded

    def counted(encoded, label):
        encoded = tf.py_function(tick, [encoded], tf.string)
        encoded.set_shape([])
        return encoded, label

    return dataclasses.replace(source, dataset=source.dataset.map(counted)), count


def _decoded(source):
    size = FLAGS.image_size
    return source.dataset.map(lambda e, y: (decode_and_resize(e, image_size=size), y),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _epoch(method: str, source, path: pathlib.Path) -> int:
    """One epoch of batches through `method`'s cache at `path`; returns the images delivered."""
    if method == "file_cache":
        ds = input_pipeline.make_dataset(source, image_size=FLAGS.image_size, batch_size=BATCH,
                                         training=False, cache=str(path))
    elif method == "save_load":
        if not path.exists():
            _decoded(source).save(str(path))
        ds = tf.data.Dataset.load(str(path)).batch(BATCH).prefetch(tf.data.AUTOTUNE)
    else:
        ds = _decoded(source).snapshot(str(path)).batch(BATCH).prefetch(tf.data.AUTOTUNE)
    return sum(int(y.shape[0]) for _, y in ds)


def _size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _child(argv0: str, mode: str, method: str, path: pathlib.Path) -> subprocess.CompletedProcess:
    args = [sys.executable, argv0, f"--child={mode}", f"--method={method}", f"--path={path}",
            f"--data_dir={FLAGS.data_dir}", f"--image_size={FLAGS.image_size}",
            f"--max_images={FLAGS.max_images}", f"--kill_after={FLAGS.kill_after}"]
    return subprocess.run(args, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def run_child() -> None:
    path = pathlib.Path(FLAGS.path)
    source, count = _counted(_source(), FLAGS.kill_after if FLAGS.child == "write" else 0)
    delivered = _epoch(FLAGS.method, source, path)
    print(json.dumps({"delivered": delivered, "decoded": count[0],
                      "expected": source.num_examples}))


def after_kill(argv0: str, method: str, scratch: pathlib.Path) -> str:
    path = scratch / f"killed-{method}"
    writer = _child(argv0, "write", method, path)
    if writer.returncode != -signal.SIGKILL:
        return f"writer not killed (exit {writer.returncode})"
    reader = _child(argv0, "read", method, path)
    if reader.returncode:
        errors = re.findall(r"\b(\w+(?:Error|Exception))\b", reader.stderr)
        return f"error: {errors[-1] if errors else f'exit {reader.returncode}'}"
    got = json.loads(reader.stdout.strip().splitlines()[-1])
    if got["delivered"] < got["expected"]:
        return f"partial {got['delivered']}/{got['expected']}"
    return "rebuilt" if got["decoded"] else "complete (no decode)"


def main(argv):
    if FLAGS.child:
        run_child()
        return
    source = _source()
    rows = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as scratch:
        scratch = pathlib.Path(scratch)
        for method in METHODS:
            path = scratch / method
            start = time.perf_counter()
            n = _epoch(method, source, path)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            _epoch(method, source, path)
            warm = time.perf_counter() - start
            rows[method] = {"images": n, "cold_s": round(cold, 2), "warm_s": round(warm, 2),
                            "disk_mb": round(_size(path) / 1e6, 1)}
            print(method, rows[method], flush=True)
        for method in METHODS:
            rows[method]["after_kill"] = after_kill(argv[0], method, scratch)
            print(method, rows[method]["after_kill"], flush=True)
    print("\n| cache | images | cold epoch s | warm epoch s | disk MB | kill while writing, "
          "then read |\n|---|---:|---:|---:|---:|---|")
    for method, r in rows.items():
        print(f"| {method} | {r['images']} | {r['cold_s']} | {r['warm_s']} | {r['disk_mb']} | "
              f"{r['after_kill']} |")
    print(json.dumps({"image_size": FLAGS.image_size, "kill_after": FLAGS.kill_after,
                      "results": rows}))


if __name__ == "__main__":
    app.run(main)
