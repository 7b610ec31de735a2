"""Seconds per head fit (training's default recipe) on in-memory features: fit_head against the
fit it replaced, interleaved, median of --repeats each.

    python benchmarks/head_fit_speed.py [--examples=4700] [--validation=520] [--repeats=3] \
        [--precision=auto]

Both fit the default 512-128 head with training's recipe (TrainConfig: batch 32, 10 epochs,
cosine 3e-4, label smoothing 0.1) on the same random 2048-d features (the speed does not depend on
their values), validating after every epoch, from the same seed:

- `fit_head`: head_fit.fit_head, the fit of training's fast path and of every tuning trial;
- `before`: the same compile and dataset, Keras's own Adam update, 32 steps per call (the fit
  before a whole epoch per call and the fused Adam update).

Both run under --precision's policy (auto: the training run's own choice, mixed_bfloat16 on a CPU
with AVX512_BF16). Each fit builds a fresh head, so every repeat includes the graph tracing a run
pays. Prints the fit's arithmetic (`flop_floor`: the FLOPs of the matmuls of every step and
validation pass, and the Adam update's bytes) and the rate each fit reached, one line per fit, the
final validation loss and accuracy of both and their largest weight difference, and, last, one
JSON object.
"""

import json
import statistics
import time

import keras
import numpy as np
from absl import app, flags

from mri_tfdata.model import architecture, head_fit, optimization, training_plan
from mri_tfdata.runtime import precision
from mri_tfdata.training import trainer

flags.DEFINE_integer("examples", 4700, "Training features.")
flags.DEFINE_integer("validation", 520, "Validation features.")
flags.DEFINE_integer("repeats", 3, "Fits timed of each kind; medians are reported.")
flags.DEFINE_string("precision", "auto", "Precision policy (runtime.precision.apply_precision).")
FLAGS = flags.FLAGS
_BEFORE_STEPS_PER_EXECUTION = 32


def _features(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4).astype(np.int32)
    feats = (rng.normal(size=(n, architecture.FEATURE_DIM)) * 3 + labels[:, None]).astype(np.float32)
    return feats, labels


def flop_floor(head, *, examples: int, validation: int, batch_size: int, epochs: int) -> dict:
    """The arithmetic a fit cannot avoid: the Dense layers' matmul FLOPs and Adam's memory traffic.

    Per training example: 2*in*out FLOPs forward and 2*in*out for the kernel's gradient in every
    Dense layer, and 2*in*out for the input's gradient in every layer but the first (the features
    need none); per validation example the forward pass. Adam reads the gradient and reads and
    writes each variable and its two moments in float32: 7 x 4 bytes per parameter per step.
    """
    dense = [layer.kernel.shape for layer in head.layers if isinstance(layer, keras.layers.Dense)]
    forward = sum(2 * i * o for i, o in dense)
    backward = forward + sum(2 * i * o for i, o in dense[1:])
    steps = (examples // batch_size) * epochs
    train_flops = steps * batch_size * (forward + backward)
    validation_flops = epochs * validation * forward
    parameters = sum(int(np.prod(w.shape)) for w in head.trainable_weights)
    return {"train_gflop": round(train_flops / 1e9, 1),
            "validation_gflop": round(validation_flops / 1e9, 1),
            "steps": steps, "parameters": parameters,
            "adam_gb": round(steps * parameters * 7 * 4 / 1e9, 1)}


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
    policy = precision.apply_precision(FLAGS.precision)
    train, validation = _features(FLAGS.examples, 0), _features(FLAGS.validation, 1)
    seconds = {"before": [], "fit_head": []}
    results = {}
    for i in range(FLAGS.repeats):
        for name, fit in (("before", _fit_before), ("fit_head", _fit_head)):
            elapsed, history, weights = _timed(fit, train, validation, config)
            seconds[name].append(elapsed)
            results[name] = (history, weights)
            print(f"{name} fit {i + 1}: {elapsed:.2f} s for {config.epochs} epochs", flush=True)
    floor = flop_floor(architecture.build_head(standardize=True), examples=FLAGS.examples,
                       validation=FLAGS.validation, batch_size=config.batch_size,
                       epochs=config.epochs)
    gflop = floor["train_gflop"] + floor["validation_gflop"]
    print(f"{policy}: {floor['steps']} steps; {floor['train_gflop']} GFLOP training and "
          f"{floor['validation_gflop']} GFLOP validation matmuls, {floor['parameters']} parameters "
          f"({floor['adam_gb']} GB of Adam traffic); the median fits reach "
          + ", ".join(f"{name} {gflop / statistics.median(values):.0f} GFLOP/s"
                      for name, values in seconds.items()))
    final = {name: {key: round(history[key][-1], 4) for key in ("val_loss", "val_accuracy")}
             for name, (history, _) in results.items()}
    weight_difference = max(float(np.max(np.abs(a - b))) for a, b in
                            zip(results["before"][1], results["fit_head"][1]))
    print(f"final validation: {final}; largest weight difference {weight_difference:.2e}")
    medians = {name: round(statistics.median(values), 2) for name, values in seconds.items()}
    print(json.dumps({"precision": policy, "flop_floor": floor, "examples": FLAGS.examples, "validation": FLAGS.validation,
                      "epochs": config.epochs, "batch_size": config.batch_size,
                      "seconds": {k: [round(s, 2) for s in v] for k, v in seconds.items()},
                      "median_seconds": medians,
                      "speedup": round(medians["before"] / medians["fit_head"], 2),
                      "final_validation": final,
                      "largest_weight_difference": weight_difference}))


if __name__ == "__main__":
    app.run(main)
