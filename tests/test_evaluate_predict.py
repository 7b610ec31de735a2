"""Smoke tests of the evaluate and predict entry points on a tiny untrained model."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import kaggle_trees

SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved untrained 32 px classifier and a tiny synthetic Kaggle tree."""
    import keras

    from mri_tfdata import model, synthetic

    root = tmp_path_factory.mktemp("evaluate_predict")
    data = synthetic.write_synthetic_dataset(root / "data", train_per_class=1, test_per_class=2,
                                             image_size=SIZE)
    keras.utils.set_random_seed(1)
    classifier = model.build_classifier(model.build_backbone(image_size=SIZE, weights="none"),
                                        model.build_head(hidden_units=(8,)))
    model.compile_model(classifier, learning_rate=1e-3)
    classifier.save(root / "model.keras")
    return root, data, classifier


def _run(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=300)
    # Error paragraphs are wrapped; join the lines so that messages can be matched whole.
    return proc.returncode, proc.stdout, " ".join(proc.stderr.split())


def _expected(classifier, files):
    from mri_tfdata import inference

    images = np.stack([inference.load_image(f, image_size=SIZE) for f in files])
    return classifier.predict(images, verbose=0)


def test_evaluate_writes_metrics_and_plot(tiny, tmp_path):
    root, data, classifier = tiny
    out = tmp_path / "eval"
    code, stdout, err = _run("mri_tfdata.evaluate", f"--model={root / 'model.keras'}",
                             "--source=folder", f"--data_dir={data}", "--split=test",
                             "--batch_size=3", f"--out={out}")
    assert code == 0, err[-3000:]
    assert "accuracy=" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "confusion_matrix.png").exists()

    from mri_tfdata import kaggle_layout, reports

    files = sorted((data / "Testing").rglob("*.jpg"))
    labels = [kaggle_layout.CLASS_NAMES.index(f.parent.name) for f in files]
    expected = reports.classification_metrics(labels, _expected(classifier, files),
                                              kaggle_layout.CLASS_NAMES)
    assert metrics["num_examples"] == 8
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert metrics["split"] == "test"

    # Existing results are not overwritten.
    code, _, err = _run("mri_tfdata.evaluate", f"--model={root / 'model.keras'}",
                        "--source=folder", f"--data_dir={data}", f"--out={out}")
    assert code == 1 and "already holds metrics.json" in err and "--overwrite" in err


def test_evaluate_flag_errors_exit_2(tmp_path):
    code, _, err = _run("mri_tfdata.evaluate", f"--out={tmp_path}")
    assert code == 2 and "--model is required" in err and "Traceback" not in err


def test_predict_good_corrupt_and_bomb_files(tiny, tmp_path):
    root, data, classifier = tiny
    good = sorted((data / "Testing").rglob("*.jpg"))[:2]
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:200])
    bomb = tmp_path / "bomb.png"
    # A header declaring 9000 x 9000 pixels (over the 8192 x 8192 limit) and no pixel data.
    bomb.write_bytes(kaggle_trees.raw_png(9000, 9000, bit_depth=8, color_type=2))
    missing = tmp_path / "missing.jpg"
    files = [good[0], garbage, truncated, bomb, missing, good[1]]

    code, stdout, err = _run("mri_tfdata.predict", f"--model={root / 'model.keras'}",
                             "--batch_size=4", *map(str, files))
    assert code == 1, err[-3000:]
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [pathlib.Path(line["file"]) for line in lines] == files
    for line in lines[1:5]:
        assert "error" in line and "class" not in line
    assert "9000x9000" in lines[3]["error"]  # Refused from the header, before decoding.

    expected = _expected(classifier, [good[0], good[1]])
    for line, probabilities in zip([lines[0], lines[5]], expected):
        assert list(line["probabilities"]) == ["glioma", "meningioma", "notumor", "pituitary"]
        np.testing.assert_allclose(list(line["probabilities"].values()), probabilities, atol=1e-5)
        assert line["class"] == list(line["probabilities"])[int(np.argmax(probabilities))]


def test_predict_refuses_missing_model(tmp_path):
    code, _, err = _run("mri_tfdata.predict", f"--model={tmp_path / 'nope.keras'}", "x.jpg")
    assert code == 1 and "is not a file" in err and "Traceback" not in err
