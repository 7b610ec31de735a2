"""Classifies image files and folders: `mri-predict --model=runs/demo/model.keras scans/ a.jpg`.

Folders are searched recursively for .jpg, .jpeg and .png files, skipping junk as the dataset
builder does (hidden files and folders, Thumbs.db, ...). Each file gets one JSON line on stdout,
{"file", "class", "probabilities": {class: p}}, or a line or row of --output (.jsonl or .csv). A
file that cannot be read gets {"file", "error"} instead, saying why in words; the other files are
still classified, and the exit status is 1.
"""

import csv
import io
import json
import pathlib
import sys
from typing import Iterator, Sequence

import keras
import numpy as np
from absl import flags, logging

from mri_tfdata import atomic, cli, images, inference, kaggle_layout
from mri_tfdata.cli import require
from mri_tfdata.errors import UserError


def find_images(paths: Sequence) -> list[pathlib.Path]:
    """The files named and the image files in the folders named (recursively), in order.

    A folder without images stays in the list as itself, so that it gets an error line.
    """
    found = []
    for path in map(pathlib.Path, paths):
        found.extend((kaggle_layout.list_images(path) or [path]) if path.is_dir() else [path])
    return found


def _read(path: pathlib.Path, image_size: int) -> np.ndarray | str:
    """The image as the model takes it, or why it cannot be read, in words."""
    if path.is_dir():
        return f"a folder with no {', '.join(kaggle_layout.IMAGE_SUFFIXES)} file in it"
    try:
        return inference.load_image(path, image_size=image_size)
    except images.CorruptImageError as e:
        return str(e)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"


def classify_files(saved: inference.SavedClassifier, files: Sequence,
                   *, batch_size: int = 32) -> Iterator[dict]:
    """Classifies image files, `batch_size` at a time; yields one result per file, in order.

    Args:
      saved: the classifier, from inference.load_classifier.
      files: paths of image files.
      batch_size: images per forward pass.

    Yields:
      {"file", "class", "probabilities": {class name: p}}, or {"file", "error"} for a file
      that cannot be read (not an image, corrupt, absurdly large, missing).
    """
    for start in range(0, len(files), batch_size):
        chunk = [pathlib.Path(f) for f in files[start:start + batch_size]]
        read = [_read(path, saved.image_size) for path in chunk]
        batch = [image for image in read if not isinstance(image, str)]
        probabilities = iter(saved.model.predict_on_batch(np.stack(batch)) if batch else [])
        for path, image in zip(chunk, read):
            if isinstance(image, str):
                logging.warning("Cannot classify %s: %s", path, image)
                yield {"file": str(path), "error": image}
                continue
            p = next(probabilities)
            yield {"file": str(path), "class": saved.class_names[int(np.argmax(p))],
                   "probabilities": {name: round(float(v), 6)
                                     for name, v in zip(saved.class_names, p)}}


def to_csv(results: list[dict], class_names: Sequence[str]) -> str:
    """The results as CSV: file, class, one probability column per class, error."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file", "class", *class_names, "error"])
    for r in results:
        p = r.get("probabilities", {})
        writer.writerow([r["file"], r.get("class", ""), *(p.get(n, "") for n in class_names),
                         r.get("error", "")])
    return out.getvalue()


FLAGS = flags.FLAGS
_OUTPUT_SUFFIXES = (".jsonl", ".csv")


def _define_flags() -> None:
    flags.DEFINE_string("model", None, "The model.keras of a training run (or its workdir).")
    flags.DEFINE_integer("batch_size", 32, "Images classified per forward pass.")
    flags.DEFINE_string("output", None, "Write the results to this .jsonl or .csv file instead of "
                        "stdout (with a progress bar on a terminal).")
    flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")


def main(argv):
    require(bool(FLAGS.model), "--model is required: the model.keras file of a training run.")
    require(len(argv) > 1, "Pass image files or folders after the flags, e.g. "
            "mri-predict --model=runs/demo/model.keras scans/ scan.jpg")
    require(FLAGS.batch_size >= 1, "--batch_size must be at least 1.")
    output = pathlib.Path(FLAGS.output).expanduser() if FLAGS.output else None
    if output:
        require(output.suffix.lower() in _OUTPUT_SUFFIXES,
                f"--output={output} must end in .jsonl or .csv.")
        if output.exists() and not FLAGS.overwrite:
            raise UserError(f"--output={output} already exists; pass another --output, or "
                            "--overwrite to replace it.")
    saved = inference.load_classifier(FLAGS.model)
    files = find_images(argv[1:])
    logging.info("Classifying %d files with %s.", len(files), saved.path)
    # On stdout the lines themselves show the progress; a bar only when they go to a file.
    bar = (keras.utils.Progbar(len(files), unit_name="file")
           if output and sys.stdout.isatty() and len(files) > FLAGS.batch_size else None)
    results = []
    for result in classify_files(saved, files, batch_size=FLAGS.batch_size):
        results.append(result)
        if output is None:
            print(json.dumps(result), flush=True)
        elif bar:
            bar.add(1)
    failures = sum("error" in r for r in results)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(output, to_csv(results, saved.class_names)
                            if output.suffix.lower() == ".csv"
                            else "".join(json.dumps(r) + "\n" for r in results))
        print(output)
    logging.info("Classified %d files, %d could not be read.", len(results) - failures, failures)
    if failures:
        sys.exit(1)


def console_main():
    """The `mri-predict` command."""
    _define_flags()
    cli.run(main)


if __name__ == "__main__":
    console_main()
