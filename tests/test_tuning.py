"""Tests of the KerasTuner head search: the space, outputs, resume after a kill, best.flags, the
grouped final selection, damaged state files and the objective plot."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import dataspec
from mri_tfdata.evaluation import calibration, reports
from mri_tfdata.model import feature_cache
from mri_tfdata.training import trainer
from tuning import hypermodel, project, results, selection, tuners

OBJECTIVE = tuners.OBJECTIVE.name

TIMEOUT_S = 240
# Tiny synthetic data at 32 px: feature extraction takes a second, a trial a few.
SEARCH_FLAGS = ["--source=synthetic", "--synthetic_train_per_class=10",
                "--synthetic_test_per_class=2", "--image_size=32", "--weights=none",
                "--batch_size=8", "--batch_sizes=8,16", "--epochs=2", "--tuner=random",
                "--precision=float32", "--selection_folds=3"]


def _search(tmp_path, *args, project="search"):
    """Starts `python -m tuning.search` on the tiny data; data, caches and trials under tmp_path.

    Its output goes to files (a full pipe would block a process the test waits for).
    """
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("KERASTUNER_ORACLE_IP", None)
    command = [sys.executable, "-m", "tuning.search", *SEARCH_FLAGS,
               # Relative to cwd=tmp_path: best.flags must still name these folders.
               "--data_dir=data", "--feature_cache=features",
               f"--directory={tmp_path / 'runs'}", f"--project_name={project}", *args]
    logs = tempfile.mkdtemp(dir=tmp_path, prefix="log-")
    with open(f"{logs}/out", "w") as out, open(f"{logs}/err", "w") as err:
        proc = subprocess.Popen(command, env=env, cwd=tmp_path, text=True, stdout=out, stderr=err)
    proc.logs = Path(logs)
    return proc


def _finish(proc):
    """Waits for a search; returns (exit code, stdout, stderr)."""
    try:
        proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, (proc.logs / "out").read_text(), (proc.logs / "err").read_text()


def _rows(project_dir: Path) -> list[dict]:
    with open(project_dir / results.RESULTS_CSV, newline="") as f:
        return list(csv.DictReader(f))


def _chosen(project_dir: Path) -> dict:
    """The final selection's chosen candidate (its row of selection.csv)."""
    with open(project_dir / selection.SELECTION_CSV, newline="") as f:
        chosen = [r for r in csv.DictReader(f) if r["chosen"] == "True"]
    assert len(chosen) == 1, chosen
    return chosen[0]


def _trial_files(project_dir: Path) -> dict[str, float]:
    """Each trial's checkpoint and its modification time: a rerun trial rewrites it."""
    return {p.parent.name: p.stat().st_mtime_ns
            for p in project_dir.glob("trial_*/checkpoint.weights.h5")}


def _ended(project_dir: Path) -> list[str]:
    """IDs of the trials the oracle has recorded as ended (read while the search may write)."""
    try:
        return json.loads((project_dir / "oracle.json").read_text())["end_order"]
    except (OSError, ValueError, KeyError):
        return []


def _separable_features(n=24, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int32) % 4
    vectors = (rng.normal(size=(n, 2048)) + labels[:, None]).astype(np.float32)
    return feature_cache.FeatureSet(vectors, labels, key=None, path=None, from_cache=False)


def test_build_model_with_default_hyperparameters_is_the_default_head_and_recipe():
    hp = keras_tuner.HyperParameters()
    head = hypermodel.build_model(hp, num_classes=4)
    assert head.input_shape == (None, 2048) and head.output_shape == (None, 4)
    dense = [layer.units for layer in head.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [512, 128, 4]  # train.py's default head
    recipe = hypermodel.declare_recipe(hp, batch_sizes=(16, 32), epochs=(5, 10, 15))
    defaults = trainer.TrainConfig()  # train.py's flag defaults
    assert recipe == {"learning_rate": pytest.approx(defaults.learning_rate),
                      "schedule": defaults.schedule, "label_smoothing": defaults.label_smoothing,
                      "weight_decay": defaults.weight_decay, "batch_size": defaults.batch_size,
                      "epochs": defaults.epochs}
    assert hp.values == {"num_layers": 2, "units_0": 512, "units_1": 128, "dropout": 0.0,
                         "learning_rate": pytest.approx(defaults.learning_rate),
                         "lr_schedule": "cosine", "label_smoothing": 0.1, "weight_decay": 0.0,
                         "batch_size": 32, "epochs": 10}
    assert hypermodel.head_units(hp.values) == (512, 128)
    # A shallower trial keeps deeper layers' units in its values; they take no part.
    assert hypermodel.head_units({"num_layers": 1, "units_0": 64, "units_1": 32}) == (64,)


def test_the_space_covers_the_good_region_with_margin():
    hp = keras_tuner.HyperParameters()
    hypermodel.build_model(hp, num_classes=4)
    hypermodel.declare_recipe(hp, batch_sizes=(32,), epochs=hypermodel.epoch_choices(10))
    space = {h.name: h for h in hp.space}
    # The measured best rates (1e-4 .. 1e-3) lie well inside, a decade from either edge.
    lr = space["learning_rate"]
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-5, 1e-2, "log")
    assert set(space["lr_schedule"].values) == {"constant", "cosine", "step"}
    assert 0.0 in space["label_smoothing"].values and max(space["label_smoothing"].values) >= 0.2
    assert 0.0 in space["weight_decay"].values and len(space["weight_decay"].values) >= 3
    assert space["epochs"].values == [5, 10, 15]
    assert hypermodel.epoch_choices(2) == (1, 2, 3) and hypermodel.epoch_choices(1) == (1,)
    # Dropout is not searched (it lowered test accuracy at every rate measured): fixed at --dropout.
    assert isinstance(space["dropout"], keras_tuner.engine.hyperparameters.Fixed)
    assert (tuners.OBJECTIVE.name, tuners.OBJECTIVE.direction) == (
        "val_calibrated_cross_entropy", "min")
    assert selection.FOLD_METRICS["loss"] == tuners.OBJECTIVE.name


def test_trial_heads_keep_the_precision_policy_and_fit_on_features():
    feature_set = _separable_features()
    vectors = feature_set.features
    model = hypermodel.HeadHyperModel(
        train=feature_set, validation=feature_set, num_classes=4, activation="relu", dropout=0.0,
        standardize=True, precision_policy="mixed_bfloat16", batch_sizes=(8,), epochs=(3,),
        seed=0)
    hp = keras_tuner.HyperParameters()
    model.declare_hyperparameters(hp)
    assert hp.values["batch_size"] == 8
    try:
        # KerasTuner clears the session before every build, which resets the policy.
        keras.backend.clear_session()
        head = model.build(hp)
        assert head.get_layer("dense_0").dtype_policy.name == "mixed_bfloat16"
        assert head.get_layer("probabilities").dtype_policy.name == "float32"
        # The score is the last epoch's, as the trained model keeps the last epoch's weights:
        # the accuracy of the fitted head on the validation features.
        metrics = model.fit(hp, head)
        assert int(head.optimizer.iterations.numpy()) == 3 * (24 // 8)  # hp epochs, not kwargs
        predicted = np.asarray(head.predict(vectors, verbose=0)).argmax(axis=1)
        assert metrics["val_accuracy"] == pytest.approx(
            float(np.mean(predicted == feature_set.labels)))
        # The Normalization layer was fitted to the training features, as training fits it.
        mean = np.asarray(head.get_layer("standardize").mean).reshape(-1)
        np.testing.assert_allclose(mean, vectors.mean(axis=0), rtol=1e-4, atol=1e-4)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.integration
@pytest.mark.parametrize("name", tuners.TUNERS)
def test_each_tuner_runs_trials_on_features(tmp_path, name):
    feature_set = _separable_features()
    model = hypermodel.HeadHyperModel(
        train=feature_set, validation=feature_set, num_classes=4, activation="relu", dropout=0.0,
        standardize=True, precision_policy="float32", batch_sizes=(8, 16),
        epochs=None if name == "hyperband" else (2, 3), seed=0)
    tuner = tuners.make_tuner(name, model, max_trials=2, epochs=3, executions_per_trial=1,
                              directory=str(tmp_path), project_name=name, overwrite=False,
                              strategy=tf.distribute.get_strategy(), seed=0)
    tuner.search(epochs=3, verbose=0)
    rows = results.trial_rows(tuner.oracle, tuners.OBJECTIVE)
    assert len(rows) >= 2 and all(r["status"] == "COMPLETED" for r in rows)
    best = results.best_row(rows, tuners.OBJECTIVE)
    assert best[OBJECTIVE] == min(r[OBJECTIVE] for r in rows)  # A cross-entropy: lower is better.
    if name == "hyperband":  # Later rounds continue the best trials of earlier ones.
        assert any(r.get("tuner/initial_epoch", 0) > 0 for r in rows)


@pytest.mark.integration
def test_a_test_validation_split_is_refused(tmp_path):
    code, _, err = _finish(_search(tmp_path, "--validation_split=test"))
    assert code == 2, err[-2000:]
    assert "error:" in err and "test split" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def resumed_search(tmp_path_factory):
    """A 2-trial search SIGKILLed once its first trial finished, then rerun with the same command.

    Returns (tmp_path, project_dir, output of the rerun, {trial: checkpoint mtime} at the kill).
    """
    tmp_path = tmp_path_factory.mktemp("search")
    project_dir = tmp_path / "runs" / "search"
    proc = _search(tmp_path, "--max_trials=2")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # Kill once the oracle has recorded the end of trial 0 (its oracle.json, which the
        # rerun reloads, not just the trial's own file), while the search still runs.
        while time.monotonic() < deadline and proc.poll() is None and not _ended(project_dir):
            time.sleep(0.1)
        assert proc.poll() is None, "the search ended too soon: " + _finish(proc)[2][-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    finished = {f"trial_{i}" for i in _ended(project_dir)}
    assert finished == {"trial_0"}
    checkpoints = {k: v for k, v in _trial_files(project_dir).items() if k in finished}
    code, out, err = _finish(_search(tmp_path, "--max_trials=2"))
    assert code == 0, err[-3000:]
    assert "Reloading Tuner" in out + err
    return tmp_path, project_dir, out + err, checkpoints


@pytest.mark.integration
def test_killed_search_resumes_without_repeating_finished_trials(resumed_search):
    _, project_dir, _, checkpoints = resumed_search
    rows = _rows(project_dir)
    # Numbered as KerasTuner's log numbers them ("Trial #1"), in the folders it writes.
    assert [(r["trial"], r["folder"]) for r in rows] == [("1", "trial_0"), ("2", "trial_1")]
    assert all(r["status"] == "COMPLETED" for r in rows)
    # The trial finished before the kill was not run again: its checkpoint is untouched.
    assert {k: v for k, v in _trial_files(project_dir).items() if k in checkpoints} == checkpoints


@pytest.mark.integration
def test_search_writes_results_plot_and_best_flags(resumed_search):
    tmp_path, project_dir, out, _ = resumed_search
    rows = _rows(project_dir)
    # The table holds each trial's score as the oracle recorded it.
    recorded = {p.parent.name: json.loads(p.read_text())["score"]
                for p in project_dir.glob("trial_*/trial.json")}
    assert {r["folder"]: float(r[OBJECTIVE]) for r in rows} == pytest.approx(recorded)
    assert {"head_units", "learning_rate", "dropout", "batch_size", "num_layers", "lr_schedule",
            "label_smoothing", "weight_decay", "epochs"} <= rows[0].keys()
    assert "Trial #2" in out  # Trial #1 ran before the kill.
    assert (project_dir / results.PLOT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 trial(s), 2 completed" in out and "python -m mri_tfdata.train --flagfile=" in out

    # The final selection re-scored the default head and both trials (3 folds each); the chosen
    # one has the lowest mean held-out loss, and every mean is that of its folds.
    with open(project_dir / selection.SELECTION_CSV, newline="") as f:
        finalists = list(csv.DictReader(f))
    assert finalists[0]["candidate"] == "default" and finalists[0]["head_units"] == "512,128"
    assert {r["candidate"] for r in finalists[1:]} <= {"trial 1", "trial 2"}
    assert (finalists[0]["lr_schedule"], float(finalists[0]["label_smoothing"])) == ("cosine", 0.1)
    for r in finalists:
        for metric in ("loss", "accuracy"):
            folds = [float(r[f"{metric}_fold_{i}"]) for i in range(3)]
            assert float(r[f"mean_{metric}"]) == pytest.approx(np.mean(folds))
    assert float(_chosen(project_dir)["mean_loss"]) == min(
        float(r["mean_loss"]) for r in finalists)
    assert ("Final selection by held-out loss (val_calibrated_cross_entropy), 3-fold "
            "cross-validation on 40 training") in " ".join(
        out.split())
    best = _chosen(project_dir)
    text = (project_dir / results.BEST_FLAGS).read_text()
    lines = set(text.splitlines())
    assert text.startswith("# ")
    assert f"--head_units={best['head_units']}" in lines
    assert f"--batch_size={best['batch_size']}" in lines
    for name in ("dropout", "learning_rate", "label_smoothing", "weight_decay"):
        assert any(line.startswith(f"--{name}=") and
                   float(line.split("=")[1]) == pytest.approx(float(best[name]), rel=1e-5)
                   for line in lines), name
    assert f"--lr_schedule={best['lr_schedule']}" in lines
    assert f"--epochs={best['epochs']}" in lines
    # The search's data and model flags and its splits; the test split is only train's final one.
    assert {"--source=synthetic", "--image_size=32", "--weights=none",
            "--train_split=train[:85%]", "--validation_split=train[85%:]"} <= lines
    # Paths absolute: the file means the same from any working directory.
    assert {f"--data_dir={tmp_path / 'data'}", f"--feature_cache={tmp_path / 'features'}"} <= lines
    # Features were extracted once, cached (train and validation split) and reused by the rerun.
    assert len(list((tmp_path / "features").glob("*.npz"))) == 2
    assert "vectors from cache" in out


# Reads a flagfile with train.py's own flags (absl refuses unknown flags and bad values) and
# prints the settings training would use. A full training run costs a minute; parsing is the
# contract (--flagfile takes the file as it is) at the price of a Python start-up.
_PARSE_WITH_TRAIN_FLAGS = """
import json, sys
from absl import flags
from mri_tfdata import train
from mri_tfdata.cli import shared_flags
flags.FLAGS(["train", "--flagfile=" + sys.argv[1]])
spec = shared_flags.model_spec_from_flags()
data = shared_flags.data_spec_from_flags()
F = flags.FLAGS
print(json.dumps({"head_units": list(spec.head_units), "dropout": spec.dropout,
                  "learning_rate": F.learning_rate, "lr_schedule": F.lr_schedule,
                  "label_smoothing": F.label_smoothing, "weight_decay": F.weight_decay,
                  "batch_size": F.batch_size, "epochs": F.epochs,
                  "train_split": F.train_split, "validation_split": F.validation_split,
                  "test_split": F.test_split, "workdir": F.workdir, "source": data.source,
                  "image_size": spec.image_size, "weights": spec.weights}))
"""


@pytest.mark.integration
def test_best_flags_parse_as_training_flags(resumed_search):
    tmp_path, project_dir, _, _ = resumed_search
    best = _chosen(project_dir)
    proc = subprocess.run([sys.executable, "-c", _PARSE_WITH_TRAIN_FLAGS,
                           str(project_dir / results.BEST_FLAGS)],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=tmp_path, text=True,
                          capture_output=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    used = json.loads(proc.stdout.strip().splitlines()[-1])
    assert used["head_units"] == [int(u) for u in best["head_units"].split(",")]
    assert used["dropout"] == pytest.approx(float(best["dropout"]))
    assert used["learning_rate"] == pytest.approx(float(best["learning_rate"]), rel=1e-6)
    assert used["batch_size"] == int(best["batch_size"])
    assert used["lr_schedule"] == best["lr_schedule"]
    assert used["label_smoothing"] == pytest.approx(float(best["label_smoothing"]))
    assert used["weight_decay"] == pytest.approx(float(best["weight_decay"]))
    assert used == {**used, "epochs": int(best["epochs"]), "train_split": "train[:85%]",
                    "test_split": "test",
                    "validation_split": "train[85%:]", "source": "synthetic", "image_size": 32,
                    "weights": "none", "workdir": str(project_dir / "best_model")}


@pytest.mark.integration
def test_resuming_with_other_settings_is_refused(resumed_search):
    tmp_path, _, _, _ = resumed_search
    code, _, err = _finish(_search(tmp_path, "--max_trials=2", "--image_size=48"))
    assert code == 1, err[-2000:]
    message = " ".join(err.split())
    assert "other settings (data, model)" in message and "--project_name" in message


@pytest.mark.integration
def test_rerun_of_a_finished_search_fits_nothing_again(resumed_search):
    tmp_path, project_dir, _, _ = resumed_search
    before = (project_dir / selection.SELECTION_CSV).read_text()
    checkpoints = _trial_files(project_dir)
    code, out, err = _finish(_search(tmp_path, "--max_trials=2"))
    assert code == 0, err[-3000:]
    assert "Fitting head" not in out + err  # Neither a trial nor a selection fold.
    assert (out + err).count("scored before") == len(before.splitlines()) - 1
    assert (project_dir / selection.SELECTION_CSV).read_text() == before
    assert _trial_files(project_dir) == checkpoints


@pytest.mark.integration
@pytest.mark.parametrize("flag, message", [("--selection_folds=1", "at least 2"),
                                           ("--selection_folds=11", "rarest class has 10"),
                                           ("--finalists=-1", "must be 0")])
def test_bad_selection_settings_are_refused(tmp_path, flag, message):
    code, _, err = _finish(_search(tmp_path, "--max_trials=1", "--epochs=1", flag))
    assert code == 2, err[-2000:]
    assert message in " ".join(err.split()) and "Traceback" not in err


def _offset_features(n=40, seed=0):
    """Four classes, each shifting its own 16 of the 2,048 features: learnable, but an untrained
    head is at chance."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int32) % 4
    vectors = rng.normal(size=(n, 2048)).astype(np.float32)
    for c in range(4):
        vectors[labels == c, c * 16:(c + 1) * 16] += 4
    return feature_cache.FeatureSet(vectors, labels, key=None, path=None, from_cache=False)


def _trial_row(trial, score, *, units=(64,), dropout=0.0, learning_rate=1e-3, batch_size=8,
               schedule="cosine", smoothing=0.1, status="COMPLETED"):
    row = {"trial": trial, "folder": f"trial_{trial - 1}", "status": status, OBJECTIVE: score,
           "num_layers": len(units), "dropout": dropout, "learning_rate": learning_rate,
           "lr_schedule": schedule, "label_smoothing": smoothing, "weight_decay": 0.0,
           "batch_size": batch_size, "epochs": 10}
    row.update({f"units_{i}": u for i, u in enumerate(units)})
    return row


def _default(**overrides):
    args = {"units": (512, 128), "dropout": 0.0, "learning_rate": 1e-3, "schedule": "cosine",
            "label_smoothing": 0.1, "weight_decay": 0.0, "batch_size": 32, "epochs": 10,
            **overrides}
    return selection.default_candidate(**args)


def test_finalists_are_the_default_then_the_best_distinct_trials():
    default = _default()
    # Scores are cross-entropies: lower is better.
    rows = [_trial_row(1, 0.40), _trial_row(2, 0.10, status="FAILED"),
            _trial_row(3, 0.20, units=(512, 128), batch_size=32),  # The default's head.
            _trial_row(4, 0.30, units=(256,)), _trial_row(5, None),
            _trial_row(6, 0.50, units=(32,)), _trial_row(7, 0.25, schedule="step")]
    chosen = selection.finalists(rows, tuners.OBJECTIVE, top=2, default=default, epochs=10)
    assert [c.label for c in chosen] == ["default", "trial 7", "trial 4"]
    assert chosen[1].head_units == (64,) and chosen[1].values["lr_schedule"] == "step"
    assert [c.trial for c in chosen] == [None, 7, 4]
    assert [c.label for c in selection.finalists(rows, tuners.OBJECTIVE, top=0, default=default,
                                                 epochs=10)] == ["default"]
    # Another smoothing is another candidate, not the default again.
    assert _default(label_smoothing=0.0).key != default.key


def test_folds_are_stratified_and_hold_out_every_example_once():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    held_out = []
    for train_index, test_index in selection.fold_indices(
            labels, groups=np.arange(len(labels)), folds=5, seed=0):
        assert not set(train_index) & set(test_index)
        assert np.bincount(labels[test_index]).tolist() == [2, 4, 6, 8]
        held_out.extend(test_index)
    assert sorted(held_out) == list(range(len(labels)))


def test_grouped_folds_never_put_identical_bytes_on_both_sides(tmp_path):
    # A folder whose training split holds byte-identical copies, within and across classes.
    spec = dataspec.DataSpec(source="synthetic", data_dir=str(tmp_path / "synth"),
                             synthetic_train_per_class=12, synthetic_test_per_class=1,
                             synthetic_image_size=32)
    spec.prepare()
    training_dir = next(p for p in (tmp_path / "synth").rglob("*") if p.name == "Training")
    files = sorted(f for f in training_dir.rglob("*") if f.is_file())
    for i, original in enumerate(files[:16]):
        for copy in range(2):  # Two more copies of each of 16 images, in the same class folder.
            (original.parent / f"copy{copy}_{i}{original.suffix}").write_bytes(
                original.read_bytes())
    source = spec.open("train")
    hashes = source.content_hashes
    assert len(hashes) == len(files) + 32
    groups = selection.content_groups(hashes)
    assert int(groups.max()) + 1 == len(files)  # Identical bytes, one group; distinct, distinct.
    assert all(groups[i] == groups[j] for i in range(len(hashes)) for j in range(len(hashes))
               if hashes[i] == hashes[j])
    for seed in range(3):
        folds = selection.fold_indices(source.labels, groups=groups, folds=3, seed=seed)
        held_out = []
        for train_index, test_index in folds:
            assert not {hashes[i] for i in train_index} & {hashes[i] for i in test_index}
            held_out.extend(test_index)
        assert sorted(held_out) == list(range(len(hashes)))
    # Ungrouped, the same split would put copies on both sides: the grouping is what prevents it.
    ungrouped = selection.fold_indices(source.labels, groups=np.arange(len(hashes)), folds=3,
                                       seed=0)
    assert any({hashes[i] for i in tr} & {hashes[i] for i in te} for tr, te in ungrouped)


@pytest.mark.integration
def test_selection_picks_the_head_that_learns_and_reuses_stored_scores(tmp_path, monkeypatch):
    data = _offset_features()
    groups = np.arange(40)
    untrained = _default(units=(32,), learning_rate=1e-9, batch_size=8, epochs=1,
                         schedule="constant", label_smoothing=0.0)
    learner = selection.Candidate("trial 3", {
        "num_layers": 1, "units_0": 32, "dropout": 0.0, "learning_rate": 1e-2,
        "lr_schedule": "cosine", "label_smoothing": 0.1, "weight_decay": 0.0, "batch_size": 8,
        "epochs": 5})
    fit_args = {"strategy": tf.distribute.get_strategy(), "precision_policy": "float32",
                "num_classes": 4, "activation": "relu", "standardize": True}
    store = selection.ScoreStore(tmp_path / "scores.json", examples=40, groups=groups, folds=3,
                                 seed=0)
    winner, scores = selection.select([untrained, learner], data, groups=groups, folds=3, seed=0,
                                      metric="loss", store=store, **fit_args)
    assert winner is learner, scores
    learned, guessed = scores[learner.key], scores[untrained.key]
    assert np.mean(learned["accuracy"]) >= 0.5 > np.mean(guessed["accuracy"]) + 0.1
    assert np.mean(learned["loss"]) < np.mean(guessed["loss"])
    assert selection.choose([untrained, learner], scores, metric="accuracy") is learner
    # A second selection with the same stored scores fits nothing and picks the same head ...
    monkeypatch.setattr(selection, "cross_validate", lambda *a, **k: pytest.fail("refitted"))
    again = selection.ScoreStore(tmp_path / "scores.json", examples=40, groups=groups, folds=3,
                                 seed=0)
    assert selection.select([untrained, learner], data, groups=groups, folds=3, seed=0,
                            metric="loss", store=again, **fit_args) == (learner, scores)
    # ... but scores made with other folds or other groups are not reused.
    assert selection.ScoreStore(tmp_path / "scores.json", examples=40, groups=groups, folds=4,
                                seed=0).scores == {}
    assert selection.ScoreStore(tmp_path / "scores.json", examples=40, groups=groups // 2,
                                folds=3, seed=0).scores == {}


def test_the_best_mean_wins_and_a_tie_keeps_the_default_head():
    default = _default()
    trial = selection.trial_candidate(_trial_row(7, 0.3), epochs=10)
    scores = {default.key: {"loss": [0.3, 0.5], "accuracy": [0.9, 0.8]},
              trial.key: {"loss": [0.5, 0.3], "accuracy": [0.8, 0.9]}}
    for metric in ("loss", "accuracy"):
        assert selection.choose([default, trial], scores, metric=metric) is default
    scores[trial.key] = {"loss": [0.5, 0.29], "accuracy": [0.8, 0.89]}
    # Lower loss wins under "loss", higher accuracy under "accuracy".
    assert selection.choose([default, trial], scores, metric="loss") is trial
    assert selection.choose([default, trial], scores, metric="accuracy") is default


def _captured_plot(monkeypatch, tmp_path, rows, **marks):
    figures = []
    monkeypatch.setattr(reports, "save_figure", lambda fig, path: figures.append(fig) or path)
    results.plot(rows, tuners.OBJECTIVE, tmp_path / "objective.png", **marks)
    return figures[0]


def test_objective_plot_has_integer_ticks_and_marks_the_selection(monkeypatch, tmp_path):
    rows = [_trial_row(1, 0.40), _trial_row(2, 0.30, learning_rate=1e-4)]
    fig = _captured_plot(monkeypatch, tmp_path, rows, finalists=(1, 2), chosen=2)
    by_trial = fig.axes[0]
    fig.canvas.draw()
    low, high = by_trial.get_xlim()
    ticks = [t for t in by_trial.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # 2 trials: no 1.5.
    labels = [t.get_text() for t in by_trial.get_legend().get_texts()]
    assert "re-scored in the final selection" in labels and "chosen (best.flags)" in labels
    star = next(c for c in by_trial.collections if c.get_label() == "chosen (best.flags)")
    np.testing.assert_allclose(star.get_offsets(), [[2, 0.30]])  # Trial 2, as KerasTuner logs it.
    assert "chosen: trial 2" in fig._suptitle.get_text()
    # When the default head wins, the title says so and no trial is starred.
    fig = _captured_plot(monkeypatch, tmp_path, rows, finalists=(2,), chosen=None)
    assert "chose the default head" in fig._suptitle.get_text()
    assert not [c for c in fig.axes[0].collections if c.get_label() == "chosen (best.flags)"]


def _in_process_search(directory, *, max_trials, feature_set):
    head_model = hypermodel.HeadHyperModel(
        train=feature_set, validation=feature_set, num_classes=4, activation="relu", dropout=0.0,
        standardize=True, precision_policy="float32", batch_sizes=(8,), epochs=(1, 2), seed=0)
    tuner = tuners.make_tuner("bayesian", head_model, max_trials=max_trials, epochs=2,
                              executions_per_trial=1, directory=str(directory),
                              project_name="p", overwrite=False,
                              strategy=tf.distribute.get_strategy(), seed=0)
    tuner.search(verbose=0)
    return [(r["trial"], r[OBJECTIVE], r["learning_rate"], r["lr_schedule"])
            for r in results.trial_rows(tuner.oracle, tuners.OBJECTIVE)]


@pytest.mark.integration
def test_a_resumed_search_ends_where_an_uninterrupted_one_ends(tmp_path):
    feature_set = _separable_features()
    uninterrupted = _in_process_search(tmp_path / "whole", max_trials=3, feature_set=feature_set)
    _in_process_search(tmp_path / "resumed", max_trials=1, feature_set=feature_set)
    # A new process starts from another random state than the one trial 1 left behind.
    keras.utils.set_random_seed(12345)
    np.random.default_rng().normal(size=100)
    resumed = _in_process_search(tmp_path / "resumed", max_trials=3, feature_set=feature_set)
    assert len(uninterrupted) == 3
    assert resumed == uninterrupted


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["oracle.json", "trial_0/trial.json", "search.json"])
def test_a_damaged_state_file_is_refused_by_name(resumed_search, damage):
    tmp_path, project_dir, _, _ = resumed_search
    copy = tmp_path / "runs" / f"damaged_{damage.replace('/', '_')}"
    shutil.copytree(project_dir, copy)
    target = copy / damage
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # Cut mid-write.
    code, _, err = _finish(_search(tmp_path, "--max_trials=2", f"--project_name={copy.name}"))
    assert code == 1, err[-2000:]
    message = " ".join(err.split())
    assert str(target) in message and "damaged" in message and "--overwrite" in message
    assert "Traceback" not in err


@pytest.mark.integration
def test_configs_tune_flags_parse_as_search_flags():
    # absl refuses unknown flags and bad values: a renamed flag breaks the shipped flagfile here.
    root = Path(__file__).parent.parent
    code = ("from absl import flags; import tuning.search; "
            "flags.FLAGS(['search', '--flagfile=configs/tune.flags']); F = flags.FLAGS; "
            "print(F.tuner, F.max_trials, F.finalists, F.selection_folds, F.selection_metric)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, text=True, capture_output=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["bayesian", "20", "3", "3", "loss"]


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _direct_calibrated_ce(probabilities, labels):
    """min over a fine log grid of T of mean -log softmax(log p / T)[label], in plain numpy."""
    log_p = np.log(probabilities.astype(np.float64))
    best = np.inf
    for t in np.exp(np.linspace(np.log(1e-2), np.log(1e2), 20001)):
        z = log_p / t
        z = z - z.max(axis=1, keepdims=True)
        nll = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels])
        best = min(best, nll)
    return best


def test_calibrated_cross_entropy_is_temperature_scaled_nll_and_ignores_confidence():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    # A head that separates the classes, imperfectly.
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[labels]
    p = _softmax(logits)
    score, temperature = calibration.temperature_scaled(p, labels)
    assert score == pytest.approx(_direct_calibrated_ce(p, labels), rel=1e-6)
    assert score == calibration.calibrated_cross_entropy(p, labels)
    plain = float(np.mean(-np.log(p[np.arange(300), labels])))
    assert score <= plain + 1e-9  # T = 1 is among the temperatures tried.
    # The same predictions made more or less confident (logits divided by a temperature, as label
    # smoothing does to a head): the plain cross-entropy changes, the calibrated one does not, and
    # the fitted temperature follows the factor.
    for factor in (0.25, 0.5, 2.0, 4.0):
        scaled = _softmax(factor * logits)
        plain_scaled = float(np.mean(-np.log(scaled[np.arange(300), labels])))
        assert abs(plain_scaled - plain) > 0.01
        again, t = calibration.temperature_scaled(scaled, labels)
        assert again == pytest.approx(score, rel=1e-6, abs=1e-9), factor
        assert t == pytest.approx(temperature * factor, rel=1e-3)
    # It still ranks heads by how well they separate the classes.
    worse = _softmax(rng.normal(size=(300, 4)) + 0.5 * np.eye(4)[labels])
    assert calibration.calibrated_cross_entropy(worse, labels) > score + 0.1
    with pytest.raises(ValueError):
        calibration.calibrated_cross_entropy(np.zeros((0, 4)), np.zeros(0, int))


def test_the_objective_is_in_the_logs_before_keras_tuner_reads_them():
    feature_set = _separable_features()
    model = hypermodel.HeadHyperModel(
        train=feature_set, validation=feature_set, num_classes=4, activation="relu", dropout=0.0,
        standardize=True, precision_policy="float32", batch_sizes=(8,), epochs=(2,), seed=0)
    hp = keras_tuner.HyperParameters()
    model.declare_hyperparameters(hp)
    seen = []

    class Recorder(keras.callbacks.Callback):  # Stands where KerasTuner's callbacks stand.
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs))

    keras.backend.clear_session()
    head = model.build(hp)
    metrics = model.fit(hp, head, callbacks=[Recorder()])
    assert len(seen) == 2 and all(OBJECTIVE in logs for logs in seen)
    # The last epoch's score is that of the fitted head's validation predictions.
    probabilities = np.asarray(head.predict(feature_set.features, verbose=0))
    assert metrics[OBJECTIVE] == seen[-1][OBJECTIVE] == pytest.approx(
        calibration.calibrated_cross_entropy(probabilities, feature_set.labels), rel=1e-4)
    assert metrics[OBJECTIVE] != pytest.approx(metrics["val_cross_entropy"])


@pytest.mark.integration
def test_the_tuner_ranks_trials_by_the_calibrated_cross_entropy(tmp_path, monkeypatch):
    computed = []
    real = calibration.temperature_scaled

    def recording(probabilities, labels):
        result = real(probabilities, labels)
        computed.append(result[0])
        return result

    monkeypatch.setattr(calibration, "temperature_scaled", recording)
    feature_set = _separable_features()
    model = hypermodel.HeadHyperModel(
        train=feature_set, validation=feature_set, num_classes=4, activation="relu", dropout=0.0,
        standardize=True, precision_policy="float32", batch_sizes=(8,), epochs=(1, 2), seed=0)
    tuner = tuners.make_tuner("random", model, max_trials=3, epochs=2, executions_per_trial=1,
                              directory=str(tmp_path), project_name="p", overwrite=False,
                              strategy=tf.distribute.get_strategy(), seed=0)
    tuner.search(verbose=0)
    assert tuner.oracle.objective.name == OBJECTIVE
    # One score per epoch, trial after trial: each trial's score is its last epoch's.
    last, scores = -1, {}
    for trial_id in tuner.oracle.end_order:
        trial = tuner.oracle.trials[trial_id]
        last += trial.hyperparameters.values["epochs"]
        scores[trial_id] = computed[last]
        assert trial.score == pytest.approx(computed[last])
    assert last == len(computed) - 1
    best = tuner.oracle.get_best_trials(1)[0]
    assert best.trial_id == min(scores, key=scores.get)
    rows = results.trial_rows(tuner.oracle, tuners.OBJECTIVE)
    assert results.best_row(rows, tuners.OBJECTIVE)["folder"] == f"trial_{best.trial_id}"


@pytest.mark.integration
def test_the_selection_scores_folds_by_the_calibrated_cross_entropy(tmp_path, monkeypatch,
                                                                    caplog):
    computed = []
    real = calibration.temperature_scaled
    monkeypatch.setattr(calibration, "temperature_scaled",
                        lambda p, y: computed.append(real(p, y)) or computed[-1])
    data = _offset_features()
    candidate = _default(units=(16,), batch_size=8, epochs=1)
    fit_args = {"strategy": tf.distribute.get_strategy(), "precision_policy": "float32",
                "num_classes": 4, "activation": "relu", "standardize": True}
    scores = selection.cross_validate(candidate, data, groups=np.arange(40), folds=3, seed=0,
                                      **fit_args)
    # One epoch per fold: each fold's "loss" is the calibrated cross-entropy of its held-out part.
    assert scores["loss"] == pytest.approx([c[0] for c in computed])
    # Fold scores stored under the old measure (plain cross-entropy) are never reused.
    path = tmp_path / "selection.json"
    store = selection.ScoreStore(path, examples=40, groups=np.arange(40), folds=3, seed=0)
    store.add(candidate.key, scores)
    stored = json.loads(path.read_text())
    stored["setting"]["objective"] = "val_cross_entropy"
    path.write_text(json.dumps(stored))
    with caplog.at_level("WARNING"):
        again = selection.ScoreStore(path, examples=40, groups=np.arange(40), folds=3, seed=0)
    assert again.scores == {}
    assert "other settings (objective" in caplog.text and OBJECTIVE in caplog.text


def test_a_search_made_with_another_objective_is_refused(tmp_path):
    settings = {"objective": OBJECTIVE, "seed": 0}
    project.record_settings(tmp_path, {**settings, "objective": "val_cross_entropy"})
    with pytest.raises(UserError, match=r"other settings \(objective\)"):
        project.check_settings(tmp_path, settings)


def test_a_bayesian_search_leaves_half_its_trials_to_the_gaussian_process(tmp_path):
    # KerasTuner's default (3 random trials per dimension, ~27 here) made 20 trials all random.
    head_model = hypermodel.HeadHyperModel(
        train=_separable_features(), validation=_separable_features(), num_classes=4,
        activation="relu", dropout=0.0, standardize=True, precision_policy="float32",
        batch_sizes=(8,), epochs=(1, 2), seed=0)
    tuner = tuners.make_tuner("bayesian", head_model, max_trials=20, epochs=2,
                              executions_per_trial=1, directory=str(tmp_path), project_name="p",
                              overwrite=False, strategy=tf.distribute.get_strategy(), seed=0)
    assert tuner.oracle.num_initial_points == 10
