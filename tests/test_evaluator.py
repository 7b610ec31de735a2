"""Fast tests of mri_tfdata.evaluation.evaluator without a model: the label check and the head's
probabilities. evaluate_split on a real classifier is in test_gradcam.py and test_training.py."""

import keras
import numpy as np
import pytest

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import sources
from mri_tfdata.evaluation import evaluator


def _source(labels):
    names = tuple(f"f{i}.jpg" for i in range(len(labels)))
    return sources.Source(dataset=None, num_examples=len(labels), class_names=("a", "b", "c", "d"),
                          cache_id="x", description="the test split",
                          index=lambda: (names, np.asarray(labels)))


def test_check_labels_accepts_the_splits_own_order_and_names_where_it_differs():
    evaluator.check_labels(_source([0, 1, 2, 3]), np.array([0, 1, 2, 3]))
    with pytest.raises(UserError, match="the test split.*at 2 of 4 positions, first at 1"):
        evaluator.check_labels(_source([0, 1, 2, 3]), np.array([0, 2, 1, 3]))
    with pytest.raises(UserError, match="3 labels for 4 images"):
        evaluator.check_labels(_source([0, 1, 2, 3]), np.array([0, 1, 2]))


def test_head_probabilities_are_the_heads_predictions_in_order():
    keras.utils.set_random_seed(0)
    head = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    vectors = np.random.default_rng(0).normal(size=(7, 8)).astype("float32")
    probabilities = evaluator.head_probabilities(head, vectors, batch_size=3)  # 3 chunks
    np.testing.assert_allclose(probabilities, head.predict(vectors, verbose=0), atol=1e-6)
