"""Tests for mri_tfdata.train: flag errors, kills at every state transition, NaN stop."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

# Tiny synthetic data and a random 32 px ResNet50: seconds per epoch on a shared 2-core CPU.
TINY = ["--source=synthetic", "--synthetic_train_per_class=8", "--synthetic_test_per_class=2",
        "--image_size=32", "--weights=none", "--head_units=16", "--batch_size=4",
        "--precision=float32", "--strategy=default", "--cache=memory", "--feature_cache=off"]


def _train(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "mri_tfdata.train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _run_train(*args, timeout=300, cwd=None):
    proc = _train(*args, cwd=cwd)
    out, err = proc.communicate(timeout=timeout)
    # Error paragraphs are wrapped; join the lines so that messages can be matched whole.
    return proc.returncode, out, " ".join(err.split())


@pytest.mark.integration
@pytest.mark.parametrize("flag, message", [
    ("--head_units=512,abc", "comma-separated list of positive integers"),
    ("--precision=float8", "--precision"),
])
def test_bad_flags_exit_2_with_one_paragraph(tmp_path, flag, message):
    code, _, err = _run_train(*TINY, f"--workdir={tmp_path / 'w'}", flag)
    assert code == 2, err
    assert "error:" in err and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "w").exists()  # Nothing is written for a rejected command.


@pytest.mark.integration
def test_a_kill_at_every_state_transition_resumes_to_a_complete_run(tmp_path):
    """SIGKILL after every durable step (fault hooks, no timing luck); each rerun goes on."""
    workdir = tmp_path / "run"
    args = [*TINY[:-1], f"--feature_cache={tmp_path / 'features'}",
            f"--data_dir={tmp_path / 'synthetic'}", f"--workdir={workdir}", "--epochs=3"]

    def killed_at(point, *damage):
        proc = _train(*args, env={**os.environ, "MRI_TFDATA_KILL_AT": point})
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{point}: {err[-3000:]}"
        return " ".join(err.split())

    killed_at("epoch_backed_up@2")  # Mid-phase: epochs 1 and 2 backed up.
    backups = workdir / "backup" / "head"
    assert sorted(p.name for p in backups.iterdir()) == [
        "epoch-0001.npz", "epoch-0001.npz.sha256", "epoch-0002.npz", "epoch-0002.npz.sha256"]
    # Damaged state: the newest backup cut short, history.json garbled (history.csv is intact).
    newest = backups / "epoch-0002.npz"
    newest.write_bytes(newest.read_bytes()[:1000])
    (workdir / "history.json").write_text("{garbled")
    err = killed_at("epoch_backed_up@2")  # Redoes epoch 2, then epoch 3; killed after the last.
    assert "epoch-0002.npz' is damaged" in err and "Resuming from" in err
    assert "history.json' is damaged" in err
    for point in ("phase_weights_saved", "phase_recorded", "model_saved", "evaluated",
                  "finished_recorded"):
        killed_at(point)
        if point == "phase_recorded":  # The trained head's state, which every rerun loads.
            kept = np.load(workdir / "checkpoints" / "head.npz")
            kept = [kept[name] for name in sorted(kept.files)]

    assert (workdir / "checkpoints").exists()  # A kill right after "finished_recorded" leaves it.
    code, out, err = _run_train(*args)
    assert code == 0 and "already holds this run, finished" in out, err[-2000:]
    assert not (workdir / "checkpoints").exists()
    code, _, err = _run_train(*args[:-1], "--epochs=4")
    assert code == 1 and "already holds a finished run" in err and "epochs" in err, err[-2000:]
    history = json.loads((workdir / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3] and set(history["phase"]) == {"head"}
    assert all(np.isfinite(history["loss"])) and "val_accuracy" in history
    for name in ("model.keras", "history.csv", "metrics.json", "loss.png", "accuracy.png",
                 "confusion_matrix.png", "flags.txt", "report.html"):
        assert (workdir / name).exists(), name
    # The backbone is stored once per run: the serving export is made on demand (mri-export).
    assert not (workdir / "export").exists()
    assert list((workdir / "logs").rglob("events.out.tfevents.*"))
    assert json.loads((workdir / "run.json").read_text())["status"] == "finished"
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["num_examples"] == 8 and np.sum(metrics["confusion_matrix"]) == 8
    flags_txt = (workdir / "flags.txt").read_text()
    assert "--epochs=3\n" in flags_txt and "--image_size=32\n" in flags_txt
    assert f"--workdir={workdir}\n" in flags_txt

    # model.keras carries the class names and image size; the loaded model matches the metrics.
    from mri_tfdata.serving import model_file

    saved = model_file.load_classifier(workdir / "model.keras")
    assert saved.class_names == ("glioma", "meningioma", "notumor", "pituitary")
    assert saved.image_size == 32
    # The reruns after the phase was recorded saved the head it trained, not a new one.
    head = saved.model.get_layer("head")
    assert len(kept) == len(head.variables)
    for state, variable in zip(kept, head.variables):
        np.testing.assert_array_equal(state, np.asarray(variable), err_msg=variable.path)


@pytest.mark.integration
def test_flags_txt_holds_absolute_paths(tmp_path):
    # Relative paths, from another working directory: flags.txt must still point at them.
    (tmp_path / "elsewhere").mkdir()
    code, out, err = _run_train(*TINY, "--data_dir=synthetic", "--workdir=run", "--epochs=1",
                                "--max_steps_per_epoch=1", "--test_split=", cwd=tmp_path)
    assert code == 0, err[-3000:]
    # Not a terminal: one line per epoch, no progress-bar redraws.
    assert "\r" not in out + err and "\x08" not in out + err and "\x1b[" not in out + err
    lines = set((tmp_path / "run" / "flags.txt").read_text().splitlines())
    assert {f"--data_dir={tmp_path / 'synthetic'}", f"--workdir={tmp_path / 'run'}",
            "--cache=memory", "--feature_cache=off", "--weights=none"} <= lines


def test_nan_loss_stops_with_clear_message(tmp_path):
    import keras

    from mri_tfdata.core.errors import UserError
    from mri_tfdata.training import resumable, workdir

    # The NaN handling is the same for every model; a tiny one keeps this test to seconds.
    net = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(4, activation="softmax")])
    net.compile(optimizer=keras.optimizers.Adam(1e30), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 4, 64)
    import tensorflow as tf

    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    run = workdir.open_run(tmp_path / "run", settings={"test": 1})
    with pytest.raises(UserError, match="loss became NaN or infinite.*lower one"):
        with resumable.phase(net, run, "head", learning_rate=1e30) as callbacks:
            net.fit(train_ds, epochs=5, callbacks=callbacks, verbose=0)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["epoch"]) < 5  # Stopped early instead of training on NaN weights.


def test_shipped_flagfiles_name_no_path_of_one_machine():
    # A fresh clone has only the repository: data paths are the user's to give (--data_dir=DIR).
    for path in (pathlib.Path(__file__).parent.parent / "configs").glob("*.flags"):
        for line in path.read_text().splitlines():
            if line.startswith("--") and "=" in line:
                value = line.split("=", 1)[1]
                assert not value.startswith(("/", "~", "..", "$")), f"{path.name}: {line}"


@pytest.mark.integration
def test_config_flagfiles_parse(tmp_path):
    root = pathlib.Path(__file__).parent.parent / "configs"
    configs = [root / name for name in ("demo.flags", "reference.flags", "kaggle.flags")]
    for path in configs:
        assert path.read_text().startswith("# "), f"{path.name} must open with its command comment"
    # Every flag of every file is known (an unknown one would be the error instead of --epochs).
    code, _, err = _run_train(*[f"--flagfile={p}" for p in configs], f"--workdir={tmp_path}",
                              "--epochs=0")
    assert code == 2 and "--epochs=0 must be at least 1" in err, err[-2000:]


def test_library_parameters_are_shown_as_the_commands_flags():
    from mri_tfdata.cli import runner

    names = {"batch_size", "overwrite", "learning_rate", "weights", "standardize_features"}
    assert runner.assignments_as_flags(
        "batch_size=64 is larger than the 40 training examples; rerun with learning_rate=1e-4, "
        "overwrite=True, standardize_features=False and weights='none'.", names) == (
        "--batch_size=64 is larger than the 40 training examples; rerun with "
        "--learning_rate=1e-4, --overwrite, --nostandardize_features and --weights=none.")
    # Names that are no flag of the command, and flags already written as flags, stay as they are.
    assert runner.assignments_as_flags("cache_id=x and --batch_size=8", names) == (
        "cache_id=x and --batch_size=8")


def test_a_workdir_that_is_a_file_is_named_as_the_flag(tmp_path):
    (tmp_path / "w").write_text("")
    code, _, err = _run_train(*TINY, f"--workdir={tmp_path / 'w'}")
    assert code == 1 and f"--workdir={tmp_path / 'w'} is a file" in err, err[-2000:]


@pytest.mark.integration
def test_a_run_killed_after_any_epoch_of_either_phase_ends_bitwise_as_the_whole_run(tmp_path):
    """Killed after every epoch of the head and the fine-tuning phase in turn (each rerun resumes
    from its backup), the run ends with the weights and metrics of the run never killed."""
    common = ["--source=synthetic", "--synthetic_train_per_class=4",
              "--synthetic_test_per_class=2", "--image_size=64", "--weights=none",
              "--head_units=8", "--batch_size=4", "--precision=float32", "--strategy=default",
              "--cache=memory", "--feature_cache=off", "--epochs=2", "--fine_tune_blocks=1",
              "--fine_tune_epochs=2", "--dropout=0.5", f"--data_dir={tmp_path / 'synthetic'}"]
    code, _, err = _run_train(*common, f"--workdir={tmp_path / 'whole'}")
    assert code == 0, err[-3000:]
    resumed = tmp_path / "resumed"
    for kill in range(4):  # After head epochs 1, 2, then fine-tuning epochs 1, 2.
        proc = _train(*common, f"--workdir={resumed}",
                      env={**os.environ, "MRI_TFDATA_KILL_AT": "epoch_backed_up"})
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"kill {kill}: {err[-3000:]}"
    code, _, err = _run_train(*common, f"--workdir={resumed}")
    assert code == 0, err[-3000:]
    assert "Resuming from" in err

    def outcome(workdir):
        metrics = json.loads((workdir / "metrics.json").read_text())
        metrics.pop("model", None)
        return metrics, json.loads((workdir / "history.json").read_text())

    assert outcome(resumed) == outcome(tmp_path / "whole")
    from mri_tfdata.serving import model_file

    whole = model_file.load_classifier(tmp_path / "whole" / "model.keras").model
    again = model_file.load_classifier(resumed / "model.keras").model
    for a, b in zip(whole.weights, again.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
