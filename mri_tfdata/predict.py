"""Classifies image files: `python -m mri_tfdata.predict --model=PATH IMAGE...`, one JSON line each.

Each line is {"file", "class", "probabilities": {class: p}}; a file that cannot be read gets
{"file", "error"} instead, the other files are still classified, and the exit code is 1.
"""

import json
import sys

import numpy as np
from absl import flags, logging

from mri_tfdata import cli, images, inference, kaggle_layout
from mri_tfdata.cli import require

flags.DEFINE_string("model", None, "The saved model: a model.keras file written by training.")
flags.DEFINE_integer("batch_size", 32, "Images classified per batch.")

FLAGS = flags.FLAGS


def main(argv):
    files = argv[1:]
    require(bool(FLAGS.model), "--model is required: the model.keras file of a training run.")
    require(bool(files), "Pass one or more image files after the flags, e.g. "
            "python -m mri_tfdata.predict --model=runs/demo/model.keras scan.jpg")
    require(FLAGS.batch_size >= 1, "--batch_size must be at least 1.")
    classifier = inference.load_classifier(FLAGS.model)
    image_size = inference.input_size(classifier)
    # The label order of the training data (TFDS builder and Kaggle folders share it).
    class_names = kaggle_layout.CLASS_NAMES
    require(classifier.output_shape[-1] == len(class_names),
            f"The model predicts {classifier.output_shape[-1]} classes, not the "
            f"{len(class_names)} of this dataset ({', '.join(class_names)}).")

    failures = 0
    for start in range(0, len(files), FLAGS.batch_size):
        chunk = files[start:start + FLAGS.batch_size]
        batch, good = [], []
        results = {}
        for path in chunk:
            try:
                batch.append(inference.load_image(path, image_size=image_size))
                good.append(path)
            except (images.CorruptImageError, OSError) as e:
                results[path] = {"file": path, "error": f"{type(e).__name__}: {e}"}
                logging.warning("Cannot classify %s: %s", path, e)
        if batch:
            probabilities = classifier.predict(np.stack(batch), verbose=0)
            for path, p in zip(good, probabilities):
                results[path] = {"file": path, "class": class_names[int(np.argmax(p))],
                                 "probabilities": {n: round(float(v), 6)
                                                   for n, v in zip(class_names, p)}}
        # One line per file, in the order given (a failed file keeps its place).
        for path in chunk:
            failures += "error" in results[path]
            print(json.dumps(results[path]), flush=True)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
