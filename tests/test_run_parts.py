"""benchmarks/run_parts.py: a training run's time split into parts from its log lines' times."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import run_parts  # noqa: E402  (benchmarks/ is not a package)

_LOG = [
    (3.0, "Precision: mixed_bfloat16 (requested auto).\n"),
    (4.0, "Backbone: ResNet50 at 64 px, weights=none.\n"),
    (5.0, "Features of folder x train[:90%] (29 images): extracting 29 images at 64 px.\n"),
    (6.5, "Extracted 29 feature vectors in 1.4 s (20.0 images/s).\n"),
    (7.0, "Wrote feature cache /c/train.npz (0.2 MB).\n"),
    (7.5, "Features of folder x train[90%:] (3 images): extracting 3 images at 64 px.\n"),
    (8.0, "Extracted 3 feature vectors in 0.4 s (7.0 images/s).\n"),
    (8.5, "Wrote feature cache /c/val.npz (0.0 MB).\n"),
    (9.0, "Epoch 1/2\n"),
    (10.0, "3/3 - 1s - 430ms/step - accuracy: 0.6667 - loss: 1.0471 - val_loss: 0.5729\n"),
    (10.1, "Epoch 2/2\n"),
    (12.5, "3/3 - 0s - 19ms/step - accuracy: 1.0000 - loss: 0.5084 - val_loss: 0.6217\n"),
    (14.0, "Features of folder x test (12 images): 12 vectors from cache /c/test.npz.\n"),
    (17.0, "folder x test (12 images): accuracy 1.0000 (95% CI 1.0-1.0), loss 0.05 on 12 images.\n"),
    (17.5, "Finished in 11 s; outputs in /r.\n"),
]


def test_breakdown_splits_the_run_at_its_log_lines():
    parts = run_parts.breakdown(_LOG, wall=19.0)
    assert parts == {"start-up": 3.0, "opening/checking": 2.0, "extraction": 3.0,
                     "head epochs": 4.0, "saving": 1.5, "evaluation": 3.0, "reports": 0.5,
                     "exit": 1.5}


def test_breakdown_of_a_log_without_the_milestones_is_empty():
    assert run_parts.breakdown(_LOG[:3], wall=5.0) == {}


def test_breakdown_of_a_run_that_extracts_every_split_before_the_epochs():
    # The test split's features come before the epochs; saving ends at its own line.
    log = _LOG[:8] + [
        (8.7, "Features of folder x test (12 images): extracting 12 images at 64 px.\n"),
        (9.0, "Extracted 12 feature vectors in 0.3 s (40.0 images/s).\n"),
        (9.1, "Wrote feature cache /c/test.npz (0.1 MB).\n"),
        (9.5, "Epoch 1/2\n"), (10.0, _LOG[9][1]), (10.1, "Epoch 2/2\n"), (12.5, _LOG[11][1]),
        (14.0, "Saved the model in /r/model.keras, its training curves beside it.\n"),
        _LOG[13], _LOG[14]]
    parts = run_parts.breakdown(log, wall=19.0)
    assert parts == {"start-up": 3.0, "opening/checking": 2.0, "extraction": 3.4,
                     "head epochs": 3.4, "saving": 1.5, "evaluation": 3.0, "reports": 0.5,
                     "exit": 1.5}
