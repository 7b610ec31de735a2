"""A 2-worker MultiWorkerMirroredStrategy run on localhost: two processes train one model."""

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # several processes

TIMEOUT_S = 180


def _worker() -> None:
    """Runs one worker (TF_CONFIG set by the test) and prints a JSON summary of the trained head."""
    import numpy as np
    import tensorflow as tf

    from mri_tfdata.model import architecture, optimization
    from mri_tfdata.runtime import distribute

    strategy = distribute.create_strategy("multi_worker")
    with strategy.scope():
        head = architecture.build_head(hidden_units=(8,), standardize=False)
        optimization.compile_model(head, learning_rate=1e-2)
    rng = np.random.default_rng(0)  # Same data on both workers; the strategy shards it.
    features = rng.normal(size=(32, architecture.FEATURE_DIM)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((features, np.arange(32) % 4)).batch(8).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    history = head.fit(dataset.with_options(options), steps_per_epoch=2, epochs=1, verbose=0)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "description": distribute.describe_strategy(strategy),
        "loss": history.history["loss"][0],
        "kernel_sum": float(np.sum(head.get_layer("probabilities").kernel.numpy())),
    }), flush=True)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_in_sync():
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": "",
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        processes.append(subprocess.Popen(
            [sys.executable, __file__], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
    outputs = []
    try:
        for p in processes:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a worker did not finish within {TIMEOUT_S} s")
    finally:
        for p in processes:  # A worker whose peer died waits forever; never leave one behind.
            if p.poll() is None:
                p.kill()
                p.wait()
    for index, report in enumerate(outputs):
        assert report["replicas"] == 2
        assert f"worker {index} of 2 worker(s)" in report["description"]
    # All-reduced gradients: both workers end with the same weights and the same loss.
    assert outputs[0]["kernel_sum"] == pytest.approx(outputs[1]["kernel_sum"], rel=1e-6)
    assert outputs[0]["loss"] == pytest.approx(outputs[1]["loss"], rel=1e-6)


if __name__ == "__main__":
    _worker()


# The whole demo at the smallest size, written to flags the tests below share.
DEMO = ["--source=synthetic", "--synthetic_train_per_class=8", "--synthetic_test_per_class=3",
        "--image_size=32", "--weights=none", "--head_units=16", "--batch_size=8", "--epochs=2",
        "--precision=float32"]


def _evaluate(model, data_dir, out):
    result = subprocess.run(
        [sys.executable, "-m", "mri_tfdata.evaluate", f"--model={model}", "--source=synthetic",
         f"--data_dir={data_dir}", "--synthetic_train_per_class=8", "--synthetic_test_per_class=3",
         "--split=test", "--feature_cache=off", f"--out={out}"],
        capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def _same_metrics(trained, evaluated):
    assert trained["num_examples"] == evaluated["num_examples"] == 12
    assert trained["confusion_matrix"] == evaluated["confusion_matrix"]
    assert trained["loss"] == pytest.approx(evaluated["loss"], rel=1e-4)


def test_two_workers_run_the_whole_demo_from_an_empty_cache(tmp_path):
    """Both workers generate the data and the features at once; each test image counts once."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    common = [*DEMO, f"--data_dir={tmp_path / 'data'}", f"--feature_cache={tmp_path / 'f'}",
              f"--workdir={tmp_path / 'run'}", "--strategy=multi_worker"]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "CUDA_VISIBLE_DEVICES": ""}
        log = open(tmp_path / f"worker{index}.log", "w")
        processes.append(subprocess.Popen([sys.executable, "-m", "mri_tfdata.train", *common],
                                          env=env, stdout=log, stderr=log))
    try:
        for index, p in enumerate(processes):
            p.wait(timeout=TIMEOUT_S * 2)
            assert p.returncode == 0, (tmp_path / f"worker{index}.log").read_text()[-3000:]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    _same_metrics(trained, _evaluate(tmp_path / "run" / "model.keras", tmp_path / "data",
                                     tmp_path / "eval"))


_TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mri_tfdata import train
from mri_tfdata.cli import runner
sys.argv = ["train", *sys.argv[1:]]
runner.run(train.main)
"""


def test_mirrored_over_two_logical_cpus_counts_each_test_image_once(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _TWO_CPUS, *DEMO, "--strategy=mirrored",
         f"--data_dir={tmp_path / 'data'}", f"--feature_cache={tmp_path / 'f'}",
         f"--workdir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=TIMEOUT_S * 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy with 2 replica(s)" in result.stderr
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    _same_metrics(trained, _evaluate(tmp_path / "run" / "model.keras", tmp_path / "data",
                                     tmp_path / "eval"))
