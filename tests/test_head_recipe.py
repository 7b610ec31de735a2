"""Tests of the head's recipe: label smoothing, learning-rate schedules, the one compile."""

import json

import keras
import numpy as np
import pytest

from mri_tfdata import head_fit, losses, model


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
    assert model.learning_rate_schedule(1e-3, schedule="constant", decay_steps=0) == 1e-3
    cosine = model.learning_rate_schedule(1e-3, schedule="cosine", decay_steps=100)
    rates = [float(cosine(step)) for step in (0, 50, 100)]
    np.testing.assert_allclose(rates, [1e-3, 5e-4, 0.0], atol=1e-9)
    step = model.learning_rate_schedule(1e-3, schedule="step", decay_steps=90)
    np.testing.assert_allclose([float(step(s)) for s in (0, 59, 61, 89)],
                               [1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)
    with pytest.raises(ValueError, match="decay_steps"):
        model.learning_rate_schedule(1e-3, schedule="cosine", decay_steps=0)


def _head_and_data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4).astype(np.int32)
    feats = (rng.normal(size=(n, model.FEATURE_DIM)) + labels[:, None]).astype(np.float32)
    keras.utils.set_random_seed(seed)
    return model.build_head(hidden_units=(8,), standardize=True), feats, labels


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
