"""Shared pytest fixtures: Keras's float32 policy for every test, and a tiny synthetic dataset."""

import keras
import pytest


@pytest.fixture(autouse=True)
def reset_policy():
    # The mixed-precision policy is process-global; a test that sets it must not leak it.
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A DataSpec of the synthetic Kaggle tree: 8 training and 2 test images per class, 32 px."""
    from mri_tfdata.data import dataspec

    spec = dataspec.DataSpec(source="synthetic", data_dir=str(tmp_path_factory.mktemp("synth")),
                             synthetic_train_per_class=8, synthetic_test_per_class=2,
                             synthetic_image_size=32)
    spec.prepare()
    return spec
