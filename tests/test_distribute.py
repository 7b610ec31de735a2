"""Tests for mri_tfdata.runtime.distribute: strategy selection, descriptions and configuration errors."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from mri_tfdata.core.errors import ParameterError, UserError
from mri_tfdata.runtime import distribute


@pytest.fixture
def no_gpu():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("checks CPU-only selection")


def test_bad_name_lists_accepted_names():
    accepted = "auto, default, one_device, mirrored, multi_worker, tpu"
    with pytest.raises(ParameterError, match=f"strategy='gpu' is not a strategy.*{accepted}"):
        distribute.create_strategy("gpu")


def test_auto_and_default_on_cpu_are_the_default_strategy(no_gpu):
    for name in ("auto", "default"):
        strategy = distribute.create_strategy(name)
        assert strategy is tf.distribute.get_strategy()
        assert "1 replica(s)" in distribute.describe_strategy(strategy)


def test_one_device_on_cpu(no_gpu):
    strategy = distribute.create_strategy("one_device")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert "CPU:0" in distribute.describe_strategy(strategy)


def test_mirrored_without_gpu_uses_every_logical_cpu(no_gpu):
    strategy = distribute.create_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == len(tf.config.list_logical_devices("CPU"))


# Logical devices must be set before TensorFlow initialises its runtime, which other tests in this
# process have already done, so this runs in a fresh interpreter.
_TWO_CPU_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from mri_tfdata.model import architecture, optimization
    from mri_tfdata.runtime import distribute
    strategy = distribute.create_strategy("mirrored")
    with strategy.scope():
        head = architecture.build_head(hidden_units=(8,))
        optimization.compile_model(head, learning_rate=1e-2, steps_per_execution=1)
    x = np.random.default_rng(0).normal(size=(16, architecture.FEATURE_DIM)).astype("float32")
    history = head.fit(x, np.arange(16) % 4, batch_size=8, epochs=1, verbose=0)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "auto": type(distribute.create_strategy("auto")).__name__,
        "description": distribute.describe_strategy(strategy),
        "loss": history.history["loss"][0],
        "variable": type(head.get_layer("dense_0").kernel.value).__name__,
    }))
    """
)


@pytest.mark.integration
def test_mirrored_over_two_logical_cpus_trains(no_gpu):
    result = subprocess.run(
        [sys.executable, "-c", _TWO_CPU_SCRIPT], capture_output=True, text=True, timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["auto"] == "_DefaultDistributionStrategy"
    assert "MirroredStrategy with 2 replica(s)" in report["description"]
    assert "CPU:0" in report["description"] and "CPU:1" in report["description"]
    assert report["loss"] > 0
    assert report["variable"] == "MirroredVariable"


def test_multi_worker_without_tf_config_shows_an_example(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    example = r"\"worker\": \[\"host1:12345\", \"host2:12345\"\]"
    with pytest.raises(UserError, match=f"needs the TF_CONFIG environment variable.*{example}"):
        distribute.create_strategy("multi_worker")


@pytest.mark.parametrize(
    "tf_config",
    [
        "{not json",
        json.dumps({"cluster": {"worker": ["localhost:1"]}}),
        json.dumps({"cluster": {"worker": ["localhost:1"]},
                    "task": {"type": "worker", "index": 1}}),
        json.dumps({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}),
        json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}),
    ],
)
def test_multi_worker_with_malformed_tf_config(monkeypatch, tf_config):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match="TF_CONFIG is malformed.*index"):
        distribute.create_strategy("multi_worker")


def test_tpu_without_a_tpu_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(UserError, match="strategy='tpu' found no usable TPU.*pass tpu='local'"):
        distribute.create_strategy("tpu")
