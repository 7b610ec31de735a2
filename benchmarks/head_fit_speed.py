"""Seconds per head fit (training's default recipe) on in-memory features: fit_head against the
fit it replaced, interleaved, median of --repeats each.

    python benchmarks/head_fit_speed.py [--examples=4700] [--validation=520] [--repeats=3]

Both fit the default 512-128 head with training's recipe (TrainConfig: batch 32, 10 epochs,
cosine 3e-4, label smoothing 0.1) on the same random 2048-d features (the speed does not depend on
their values), validating after every epoch, from the same seed:

- `fit_head`: head_fit.fit_head, the fit of training's fast path and of every tuning trial;
- `before`: the same compile and dataset, Keras's own Adam update, 32 steps per call (the fit
  before a whole epoch per call and the fused Adam update).

Each fit builds a fresh head, so every repeat includes the graph tracing a run pays. Prints one
line per fit, the final validation loss and accuracy of both and their largest weight difference,
and, last, one JSON object.
"""

import json
import statistics
import time

import keras
import numpy as np
from absl import app, flags

from mri_tfdata.model import architecture, head_fit, optimization, training_plan
from mri_tfdata.training import trainer

flags.DEFINE_integer("examples", 4700, "Training features.")
flags.DEFINE_integer("validation", 520, "Validation features.")
flags.DEFINE_integer("repeats", 3, "Fits timed of each kind; medians are reported.")
FLAGS = flags.FLAGS
_BEFORE_STEPS_PER_EXECUTION = 32


def _features(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4).astype(np.int32)
    feats = (rng.normal(size=(n, architecture.FEATURE_DIM)) * 3 + labels[:, None]).astype(np.float32)
    return feats, labels


def _fit_before(head, train, validation, config: trainer.TrainConfig):
    architecture.adapt_standardization(head, train[0])
    plan = training_plan.plan_fit(num_examples=len(train[1]), batch_size=config.batch_size,
                                  epochs=config.epochs, replicas=1,
                                  steps_per_execution=_BEFORE_STEPS_PER_EXECUTION)
    optimization.compile_model(head, learning_rate=config.learning_rate,
                               schedule=config.schedule, decay_steps=plan.decay_steps,
                               label_smoothing=config.label_smoothing,
                               weight_decay=config.weight_decay,
                               steps_per_execution=plan.steps_per_execution)
    train_ds = head_fit.make_feature_dataset(*train, batch_size=config.batch_size, training=True,
                                             seed=config.seed)
    val_ds = head_fit.make_feature_dataset(*validation, batch_size=config.batch_size,
                                           training=False)
    return head.fit(train_ds, validation_data=val_ds, epochs=config.epochs, shuffle=False,
                    verbose=0)


def _fit_head(head, train, validation, config: trainer.TrainConfig):
    return head_fit.fit_head(head, *train, validation=validation,
                             learning_rate=config.learning_rate, epochs=config.epochs,
                             batch_size=config.batch_size, schedule=config.schedule,
                             label_smoothing=config.label_smoothing,
                             weight_decay=config.weight_decay, seed=config.seed, verbose=0)


def _timed(fit, train, validation, config):
    keras.utils.set_random_seed(config.seed)
    head = architecture.build_head(standardize=True)
    start = time.perf_counter()
    history = fit(head, train, validation, config)
    return time.perf_counter() - start, history.history, head.get_weights()


def main(argv):
    del argv
    config = trainer.TrainConfig()
    train, validation = _features(FLAGS.examples, 0), _features(FLAGS.validation, 1)
    seconds = {"before": [], "fit_head": []}
    results = {}
    for i in range(FLAGS.repeats):
        for name, fit in (("before", _fit_before), ("fit_head", _fit_head)):
            elapsed, history, weights = _timed(fit, train, validation, config)
            seconds[name].append(elapsed)
            results[name] = (history, weights)
            print(f"{name} fit {i + 1}: {elapsed:.2f} s for {config.epochs} epochs", flush=True)
    final = {name: {key: round(history[key][-1], 4) for key in ("val_loss", "val_accuracy")}
             for name, (history, _) in results.items()}
    weight_difference = max(float(np.max(np.abs(a - b))) for a, b in
                            zip(results["before"][1], results["fit_head"][1]))
    print(f"final validation: {final}; largest weight difference {weight_difference:.2e}")
    medians = {name: round(statistics.median(values), 2) for name, values in seconds.items()}
    print(json.dumps({"examples": FLAGS.examples, "validation": FLAGS.validation,
                      "epochs": config.epochs, "batch_size": config.batch_size,
                      "seconds": {k: [round(s, 2) for s in v] for k, v in seconds.items()},
                      "median_seconds": medians,
                      "speedup": round(medians["before"] / medians["fit_head"], 2),
                      "final_validation": final,
                      "largest_weight_difference": weight_difference}))


if __name__ == "__main__":
    app.run(main)
