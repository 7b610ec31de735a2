"""Shared pytest fixtures: every test starts from Keras's float32 policy, whatever ran before."""

import keras
import pytest


@pytest.fixture(autouse=True)
def reset_policy():
    # The mixed-precision policy is process-global; a test that sets it must not leak it.
    yield
    keras.mixed_precision.set_global_policy("float32")
