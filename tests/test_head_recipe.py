"""Tests of the head's recipe: label smoothing, learning-rate schedules, the one compile."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from mri_tfdata.data import epoch_order
from mri_tfdata.model import architecture, array_fit, head_fit, losses, optimization
from mri_tfdata.training import trainer

ROOT = pathlib.Path(__file__).parent.parent


def _probabilities(n=6, classes=4, seed=0):
    logits = np.random.default_rng(seed).normal(size=(n, classes))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return p.astype(np.float32), (np.arange(n) % classes).astype(np.int32)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_loss_is_cross_entropy_against_smoothed_targets(smoothing):
    p, y = _probabilities()
    classes = p.shape[1]
    targets = np.full(p.shape, smoothing / classes)
    targets[np.arange(len(y)), y] += 1 - smoothing
    expected = np.mean(-(targets * np.log(p)).sum(axis=1))
    got = float(losses.SparseCrossEntropy(label_smoothing=smoothing)(y, p))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    if smoothing == 0.0:  # Exactly Keras's sparse cross-entropy, also for labels of shape [N, 1].
        plain = float(keras.losses.SparseCategoricalCrossentropy()(y[:, None], p))
        np.testing.assert_allclose(
            float(losses.SparseCrossEntropy()(y[:, None], p)), plain, rtol=1e-6)
    else:  # Smoothing changes the loss by s * (mean of -log p over all classes - true-class CE).
        ce = np.mean(-np.log(p[np.arange(len(y)), y]))
        uniform = np.mean(-np.log(p).mean(axis=1))
        np.testing.assert_allclose(got - ce, smoothing * (uniform - ce), rtol=1e-4)


def test_the_loss_round_trips_through_its_config():
    loss = losses.SparseCrossEntropy(label_smoothing=0.2)
    again = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(loss))))
    assert isinstance(again, losses.SparseCrossEntropy) and again.label_smoothing == 0.2


def test_schedules_decay_over_the_given_steps():
    assert optimization.learning_rate_schedule(1e-3, schedule="constant", decay_steps=0) == 1e-3
    cosine = optimization.learning_rate_schedule(1e-3, schedule="cosine", decay_steps=100)
    rates = [float(cosine(step)) for step in (0, 50, 100)]
    np.testing.assert_allclose(rates, [1e-3, 5e-4, 0.0], atol=1e-9)
    step = optimization.learning_rate_schedule(1e-3, schedule="step", decay_steps=90)
    np.testing.assert_allclose([float(step(s)) for s in (0, 59, 61, 89)],
                               [1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)
    with pytest.raises(ValueError, match="decay_steps"):
        optimization.learning_rate_schedule(1e-3, schedule="cosine", decay_steps=0)


def _head_and_data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4).astype(np.int32)
    feats = (rng.normal(size=(n, architecture.FEATURE_DIM)) + labels[:, None]).astype(np.float32)
    keras.utils.set_random_seed(seed)
    return architecture.build_head(hidden_units=(8,), standardize=True), feats, labels


def test_fit_head_compiles_the_recipe_and_the_cosine_reaches_zero():
    head, feats, labels = _head_and_data()
    history = head_fit.fit_head(head, feats, labels, validation=(feats, labels),
                                learning_rate=1e-2, epochs=3, batch_size=16, schedule="cosine",
                                label_smoothing=0.1, weight_decay=1e-3, seed=0, verbose=0)
    assert isinstance(head.optimizer, keras.optimizers.AdamW)
    assert head.loss.label_smoothing == 0.1
    # 48 // 16 = 3 steps per epoch, 3 epochs: the rate is 0 after the 9th step.
    assert int(head.optimizer.iterations.numpy()) == 9
    assert float(head.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
    # The objective's metric is the plain cross-entropy, below the smoothed loss once confident.
    assert {"cross_entropy", "val_cross_entropy"} <= set(history.history)
    probs = head.predict(feats, verbose=0)
    plain = float(np.mean(-np.log(probs[np.arange(len(labels)), labels])))
    np.testing.assert_allclose(history.history["val_cross_entropy"][-1], plain, rtol=1e-3)


def test_fit_head_with_the_defaults_is_plain_adam_on_sparse_cross_entropy():
    head, feats, labels = _head_and_data()
    history = head_fit.fit_head(head, feats, labels, validation=(feats, labels),
                                learning_rate=1e-3, epochs=1, batch_size=16, seed=0, verbose=0)
    assert type(head.optimizer) is keras.optimizers.Adam
    assert float(head.optimizer.learning_rate) == pytest.approx(1e-3)
    np.testing.assert_allclose(history.history["val_loss"], history.history["val_cross_entropy"],
                               rtol=1e-5)


def _reference_fit(head, feats, labels, *, epochs, batch_size, **recipe):
    """The fit fit_head replaced: Keras's own Adam update, one step per call, same dataset."""
    architecture.adapt_standardization(head, feats)
    optimization.compile_model(head, decay_steps=(len(labels) // batch_size) * epochs,
                               steps_per_execution=1, **recipe)
    order = epoch_order.EpochOrder()  # Each epoch's order from (seed, epoch), as fit_head's.
    train = head_fit.make_feature_dataset(feats, labels, batch_size=batch_size, training=True,
                                          seed=0, order=order)
    validation = head_fit.make_feature_dataset(feats, labels, batch_size=batch_size,
                                               training=False)
    return head.fit(train, validation_data=validation, epochs=epochs, shuffle=False, verbose=0,
                    callbacks=[order])


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_fit_head_gives_the_weights_of_keras_step_by_step_fit(weight_decay):
    recipe = dict(learning_rate=1e-2, schedule="cosine", label_smoothing=0.1,
                  weight_decay=weight_decay)
    reference, feats, labels = _head_and_data(n=96)
    want = _reference_fit(reference, feats, labels, epochs=3, batch_size=16, **recipe)
    head, _, _ = _head_and_data(n=96)
    got = head_fit.fit_head(head, feats, labels, validation=(feats, labels), epochs=3,
                            batch_size=16, seed=0, verbose=0, **recipe)
    assert int(head.optimizer.iterations.numpy()) == 18
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(got.history[key], want.history[key], rtol=1e-5)
    # Float tolerance: rtol 1e-5 of each array's scale (a weight near 0 moves by rounding of its
    # neighbours' size); a changed recipe (rate, schedule, smoothing, order) moves them by ~1e-3.
    pairs = list(zip(head.get_weights(), reference.get_weights())) + [
        (np.asarray(a), np.asarray(b))
        for a, b in zip(head.optimizer.variables, reference.optimizer.variables)]
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(b))))


def test_a_capped_fit_takes_the_cap_in_steps_and_in_validation_batches():
    head, feats, labels = _head_and_data(n=96)
    plan = head_fit.head_plan(num_examples=96, batch_size=16, epochs=2, strategy=_Replicas(1),
                              max_steps_per_epoch=2)
    history = head_fit.fit_head(head, feats, labels, validation=(feats, labels),
                                learning_rate=1e-3, epochs=2, batch_size=16, seed=0, plan=plan,
                                verbose=0)
    assert int(head.optimizer.iterations.numpy()) == 4
    # Validation on the first 2 batches only, as Keras's fit with validation_steps=2.
    want = head.evaluate(feats[:32], labels[:32], batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(history.history["val_loss"][-1], want["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="steps_per_epoch=7"):
        array_fit.fit_arrays(head, feats, labels, validation=None, batch_size=16, epochs=1,
                             steps_per_epoch=7)


class _Replicas:
    def __init__(self, count):
        self.num_replicas_in_sync = count


def test_head_plan_runs_a_whole_epoch_per_call_on_one_replica_only():
    one = head_fit.head_plan(num_examples=100, batch_size=8, epochs=3, strategy=_Replicas(1))
    assert (one.steps_per_epoch, one.steps_per_execution, one.decay_steps) == (12, 12, 36)
    capped = head_fit.head_plan(num_examples=100, batch_size=8, epochs=3, strategy=_Replicas(1),
                                max_steps_per_epoch=5)
    assert (capped.steps_per_epoch, capped.steps_per_execution) == (5, 5)
    several = head_fit.head_plan(num_examples=100, batch_size=8, epochs=3, strategy=_Replicas(2))
    assert (several.steps_per_epoch, several.steps_per_execution) == (12, 1)


def test_epoch_callbacks_see_every_epoch_of_a_whole_epoch_call():
    head, feats, labels = _head_and_data()
    seen = []
    callback = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append((epoch, int(head.optimizer.iterations))))
    head_fit.fit_head(head, feats, labels, validation=None, learning_rate=1e-3, epochs=3,
                      batch_size=16, seed=0, callbacks=[callback], verbose=0)
    assert seen == [(0, 3), (1, 6), (2, 9)]


# Reads a flagfile with train.py's own flags and prints the recipe training would use.
_RECIPE_OF_FLAGFILE = """
import json, sys
from absl import flags
from mri_tfdata import train
argv = ["train"] + (["--flagfile=" + sys.argv[1]] if len(sys.argv) > 1 else [])
flags.FLAGS(argv)
F = flags.FLAGS
print(json.dumps({"learning_rate": F.learning_rate, "lr_schedule": F.lr_schedule,
                  "label_smoothing": F.label_smoothing, "weight_decay": F.weight_decay,
                  "epochs": F.epochs, "dropout": F.dropout}))
"""


def _recipe_of(*flagfile):
    proc = subprocess.run([sys.executable, "-c", _RECIPE_OF_FLAGFILE, *flagfile],
                          cwd=ROOT, text=True, capture_output=True, check=False, timeout=240,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_defaults_are_the_measured_recipe_and_reference_keeps_the_reports():
    default = trainer.TrainConfig()
    recipe = {"learning_rate": 3e-4, "lr_schedule": "cosine", "label_smoothing": 0.1,
              "weight_decay": 0.0, "epochs": 10, "dropout": 0.0}
    assert (default.learning_rate, default.schedule, default.label_smoothing,
            default.weight_decay, default.epochs) == (3e-4, "cosine", 0.1, 0.0, 10)
    assert _recipe_of() == recipe  # train.py's flag defaults
    assert _recipe_of("configs/kaggle.flags") == recipe
    assert _recipe_of("configs/reference.flags") == {
        "learning_rate": 1e-4, "lr_schedule": "constant", "label_smoothing": 0.0,
        "weight_decay": 0.0, "epochs": 10, "dropout": 0.0}
