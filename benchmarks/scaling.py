"""Cost per image and peak memory of training as the data grow: 1k, 10k, 100k images at 64 px.

    python benchmarks/scaling.py --images_dir=/tmp/scaling [--sizes=1000,10000,100000]

For each size N, --images_dir/nN holds a Kaggle-layout tree (Training/ N images, Testing/ N/10),
made once and reused: real images of --native_dir (mostly 512x512 JPEGs) copied under new names
(copies, not links: the folder source reads a hard-linked file once), so decoding is real work,
and each run is checked to have read all N training images. Each size runs two commands in a fresh process with
an empty workdir and cache root (XDG_CACHE_HOME): the default run (`mri-train --source=folder
--weights=none --image_size=64`, 10 epochs, the feature fast path, --cache=memory) and the end-to-end
path (the same with --feature_cache=off --epochs=1). For each it prints the wall time, the time
per training image, the peak RSS of the training process and the disk used by its workdir and
caches, and, last, one JSON object.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("images_dir", None, "Folder of the generated trees (made once, reused).")
flags.DEFINE_string("native_dir", "/work/shared/data/kaggle-brain-tumor-mri-native",
                    "Kaggle-layout tree whose images are repeated.")
flags.DEFINE_list("sizes", ["1000", "10000", "100000"], "Training images of each run.")
flags.DEFINE_list("runs", ["default", "end_to_end"], "Which runs: default, end_to_end.")
flags.mark_flag_as_required("images_dir")
FLAGS = flags.FLAGS

RUNS = {"default": [], "end_to_end": ["--feature_cache=off", "--epochs=1"]}
# Runs the command in a child and prints the child's peak RSS in KiB (Linux ru_maxrss).
_PEAK_RSS = ("import resource, subprocess, sys; "
             "code = subprocess.run(sys.argv[1:]).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def _originals(native: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.is_file())
            for d in sorted((native / "Training").iterdir()) if d.is_dir()}


def make_tree(root: pathlib.Path, count: int, native: pathlib.Path) -> pathlib.Path:
    """root/n{count}: Training/ `count` images, Testing/ count // 10, cycling the originals."""
    tree = root / f"n{count}"
    done = tree / ".copies"
    if done.exists():
        return tree
    # A partial or older tree (its files may be hard links to the originals) is made anew.
    shutil.rmtree(tree, ignore_errors=True)
    originals = _originals(native)
    classes = list(originals)
    for split, n in (("Training", count), ("Testing", max(len(classes), count // 10))):
        for i in range(n):
            label = classes[i % len(classes)]
            files = originals[label]
            src = files[(i // len(classes)) % len(files)]
            folder = tree / split / label
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / f"{split[:2]}{i:06d}{src.suffix}")
    done.write_text("")
    return tree


def _disk_used(*folders: pathlib.Path) -> int:
    return sum(p.stat().st_size for f in folders if f.exists() for p in f.rglob("*")
               if p.is_file())


def run_once(tree: pathlib.Path, extra: list[str], count: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        workdir, cache_home = scratch / "run", scratch / "cache"
        command = [sys.executable, "-m", "mri_tfdata.train", "--source=folder",
                   f"--data_dir={tree}", "--weights=none", "--image_size=64",
                   f"--workdir={workdir}", *extra]
        env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "TF_CPP_MIN_LOG_LEVEL": "2"}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS, *command], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
        peak_kib = int(proc.stdout.strip().splitlines()[-1])
        read = {split: int(n) for split, n in re.findall(
            r"Features of folder \S+ (train\S*) \((\d+) images\)", proc.stderr)}
        if sum(read.values()) != count:
            raise SystemExit(f"The run read {read} training images, not {count}:\n"
                             f"{proc.stderr[-3000:]}")
        disk = _disk_used(workdir, cache_home)
    return {"seconds": round(seconds, 1), "ms_per_image": round(1000 * seconds / count, 2),
            "peak_rss_gb": round(peak_kib / 2**20, 2), "disk_gb": round(disk / 1e9, 3)}


def main(argv):
    del argv
    root = pathlib.Path(FLAGS.images_dir)
    results = []
    for count in map(int, FLAGS.sizes):
        start = time.perf_counter()
        tree = make_tree(root, count, pathlib.Path(FLAGS.native_dir))
        print(f"{count} images ready in {time.perf_counter() - start:.0f} s ({tree})", flush=True)
        for name in FLAGS.runs:
            result = {"images": count, "run": name, **run_once(tree, RUNS[name], count)}
            results.append(result)
            print(f"{count:>7} {name:>10}: {result['seconds']:8.1f} s, "
                  f"{result['ms_per_image']:6.2f} ms/image, peak RSS {result['peak_rss_gb']} GB, "
                  f"disk {result['disk_gb']} GB", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    app.run(main)
