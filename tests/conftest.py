"""Shared pytest fixtures: Keras's float32 policy for every test, a tiny synthetic dataset and a
tiny trained classifier, each made once per test process."""

import keras
import numpy as np
import pytest

TINY_SIZE = 32  # ResNet50's smallest input: the tiny classifier builds and runs in seconds.


@pytest.fixture(autouse=True)
def reset_policy():
    # The mixed-precision policy is process-global; a test that sets it must not leak it.
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A DataSpec of the synthetic Kaggle tree: 8 training and 2 test images per class, 32 px."""
    from mri_tfdata.data import dataspec

    spec = dataspec.DataSpec(source="synthetic", data_dir=str(tmp_path_factory.mktemp("synth")),
                             synthetic_train_per_class=8, synthetic_test_per_class=2,
                             synthetic_image_size=32)
    spec.prepare()
    return spec


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory):
    """(model.keras path, the classifier): a random 32 px ResNet50 and a (8,) head, trained as
    training leaves a model: the head fitted on features (the fast path), then the whole
    classifier compiled and fitted a step (the end-to-end path); saved with the Kaggle class
    names. Tests must not change it."""
    from mri_tfdata.data import kaggle_layout
    from mri_tfdata.model import architecture, head_fit, optimization
    from mri_tfdata.serving import model_file

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(1)
    backbone = architecture.build_backbone(image_size=TINY_SIZE, weights="none")
    head = architecture.build_head(hidden_units=(8,))
    classifier = architecture.build_classifier(backbone, head)
    features = np.random.default_rng(0).normal(size=(8, architecture.FEATURE_DIM)).astype("float32")
    head_fit.fit_head(head, features, np.arange(8) % 4, validation=None, learning_rate=1e-3,
                      epochs=1, batch_size=4, verbose=0)
    optimization.compile_model(classifier, learning_rate=1e-3)
    classifier.fit(np.zeros((4, TINY_SIZE, TINY_SIZE, 3), np.uint8), np.arange(4), verbose=0)
    path = model_file.save_classifier(classifier, tmp_path_factory.mktemp("tiny") / "model.keras",
                                      class_names=kaggle_layout.CLASS_NAMES)
    return path, classifier
