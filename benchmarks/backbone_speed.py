"""Measures the frozen ResNet50 backbone's forward rate under float32 and mixed_bfloat16.

Command: python benchmarks/backbone_speed.py [--image_size=128 --batch_size=32 --batches=10]
Hardware: any CPU; a few minutes on 2 cores. The policies run alternately, batch by batch, so
that load from other processes affects both alike. Prints one JSON line of images/second.
"""

import json
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

from mri_tfdata.cli import runner
from mri_tfdata.model import architecture

flags.DEFINE_integer("image_size", 128, "Input height and width in pixels.")
flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
flags.DEFINE_integer("batches", 10, "Timed batches per policy, after two warm-up batches.")
flags.DEFINE_list("policies", ["float32", "mixed_bfloat16"], "Keras dtype policies to compare.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    runner.require(FLAGS.image_size >= 32, "--image_size must be at least 32 (ResNet50's minimum).")
    forwards = {}
    for policy in FLAGS.policies:
        # Layers take the global policy when built, so each backbone keeps its own.
        keras.mixed_precision.set_global_policy(policy)
        backbone = architecture.build_backbone(image_size=FLAGS.image_size, weights="none")
        forwards[policy] = tf.function(lambda x, m=backbone: m(x, training=False))
    keras.mixed_precision.set_global_policy("float32")
    images = np.random.default_rng(0).integers(
        0, 256, (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, 3), dtype=np.uint8
    )
    images = tf.constant(images)
    seconds = dict.fromkeys(forwards, 0.0)
    for step in range(FLAGS.batches + 2):
        for policy, forward in forwards.items():
            start = time.perf_counter()
            forward(images).numpy()
            if step >= 2:  # The first calls trace and optimise the graph.
                seconds[policy] += time.perf_counter() - start
    rates = {p: FLAGS.batches * FLAGS.batch_size / s for p, s in seconds.items()}
    for policy, rate in rates.items():
        logging.info("%s: %.1f images/s", policy, rate)
    print(json.dumps({"image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
                      "images_per_s": {p: round(r, 1) for p, r in rates.items()}}))


if __name__ == "__main__":
    runner.run(main)
