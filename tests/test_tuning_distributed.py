"""Distributed tuning on localhost: a chief running only the oracle, two workers running trials."""

import csv
import os
import re
import socket
import subprocess
import sys

import pytest

from mri_tfdata.data.dataspec import DataSpec
from tuning import results, selection

pytestmark = pytest.mark.integration  # several processes

TIMEOUT_S = 240
MAX_TRIALS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_chief_and_two_workers_finish_all_trials(tmp_path):
    data = DataSpec(source="synthetic", data_dir=str(tmp_path / "data"),
                    synthetic_train_per_class=10, synthetic_test_per_class=2,
                    synthetic_image_size=32)
    # The data exists before the workers start (as a real dataset would); the feature cache,
    # which both workers fill at the same moment, is what this test shares between them.
    data.prepare()
    port = _free_port()
    command = [sys.executable, "-m", "tuning.search", "--source=synthetic",
               f"--data_dir={tmp_path / 'data'}", "--synthetic_train_per_class=10",
               "--synthetic_test_per_class=2", "--image_size=32", "--weights=none",
               "--batch_size=8", "--batch_sizes=8", "--epochs=1", "--tuner=random",
               f"--max_trials={MAX_TRIALS}", "--precision=float32", "--finalists=1",
               "--selection_folds=2",
               f"--feature_cache={tmp_path / 'features'}", f"--directory={tmp_path / 'runs'}",
               "--project_name=distributed"]
    processes = {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "XDG_CACHE_HOME": str(tmp_path / "cache"), "KERASTUNER_TUNER_ID": tuner_id,
                   "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
            # Logs go to files: a full pipe would block a process while the test waits for another.
            with open(tmp_path / f"{tuner_id}.log", "w") as log:
                processes[tuner_id] = subprocess.Popen(command, env=env, cwd=tmp_path, text=True,
                                                       stdout=log, stderr=subprocess.STDOUT)
        logs = {}
        for tuner_id, proc in processes.items():
            proc.wait(timeout=TIMEOUT_S)
            logs[tuner_id] = (tmp_path / f"{tuner_id}.log").read_text()
            assert proc.returncode == 0, f"{tuner_id}:\n{logs[tuner_id][-3000:]}"
    except subprocess.TimeoutExpired:
        pytest.fail(f"the distributed search did not finish within {TIMEOUT_S} s")
    finally:
        for proc in processes.values():  # A worker whose chief died waits forever; end it.
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    project_dir = tmp_path / "runs" / "distributed"
    with open(project_dir / results.RESULTS_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == MAX_TRIALS and all(r["status"] == "COMPLETED" for r in rows)
    assert (project_dir / results.BEST_FLAGS).exists() and (project_dir / results.PLOT_PNG).exists()
    # The workers ran the trials, each trial once. The chief ran none: it fitted only the final
    # selection's folds (2 per candidate), on the features the workers had cached.
    with open(project_dir / selection.SELECTION_CSV, newline="") as f:
        candidates = list(csv.DictReader(f))
    assert len(candidates) == 2 and candidates[0]["candidate"] == "default"
    fits = {tuner_id: len(re.findall(r"Fitting head ", logs[tuner_id])) for tuner_id in logs}
    assert fits["chief"] == 2 * len(candidates), logs["chief"][-3000:]
    assert "Extracted" not in logs["chief"] and "vectors from cache" in logs["chief"]
    assert fits["tuner0"] + fits["tuner1"] == MAX_TRIALS, fits
    # The oracle (on the chief) handed out each trial once.
    assert sorted(map(int, re.findall(r"Running Trial #(\d+)", logs["chief"]))) == [1, 2, 3, 4]
    # Both workers filled the same cache at once: one complete file per split, no temp file left.
    cached = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(cached) == 2 and all(name.endswith(".npz") for name in cached), cached
