"""Smoke tests of the evaluate and predict entry points on a tiny untrained model."""

import csv
import json
import pathlib
import subprocess
import sys

import image_trees
import numpy as np
import pytest

SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, trained_classifier):
    """The folder of the shared tiny classifier's model.keras, a tiny synthetic Kaggle tree and
    the classifier (conftest's trained_classifier: 32 px, compiled and trained as training leaves
    it, so its optimizer state is not saved)."""
    from mri_tfdata.data import synthetic

    path, classifier = trained_classifier
    data = synthetic.write_synthetic_dataset(tmp_path_factory.mktemp("evaluate_predict") / "data",
                                             train_per_class=1, test_per_class=2, image_size=SIZE)
    return path.parent, data, classifier


def _run(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=300)
    # Error paragraphs are wrapped; join the lines so that messages can be matched whole.
    return proc.returncode, proc.stdout, " ".join(proc.stderr.split())


def _expected(classifier, files):
    from mri_tfdata.serving import model_file

    images = np.stack([model_file.load_image(f, image_size=SIZE) for f in files])
    return classifier.predict(images, verbose=0)


@pytest.mark.integration
def test_evaluate_writes_metrics_and_plot(tiny, tmp_path):
    root, data, classifier = tiny
    out = tmp_path / "eval"
    code, stdout, err = _run("mri_tfdata.evaluate", f"--model={root / 'model.keras'}",
                             "--source=folder", f"--data_dir={data}", "--split=test",
                             "--batch_size=3", f"--out={out}")
    assert code == 0, err[-3000:]
    assert "accuracy=" in stdout
    assert "Skipping variable loading" not in err  # no optimizer state saved or loaded
    metrics = json.loads((out / "metrics.json").read_text())
    for plot in ("confusion_matrix", "roc", "reliability", "gradcam_examples"):
        assert (out / f"{plot}.png").stat().st_size > 10_000
    assert (out / "errors.csv").read_text().startswith("file,true_class,predicted_class")
    # The same results in TensorBoard, under --out/logs.
    import tensorflow as tf

    tags = {value.tag for path in (out / "logs").glob("events.out.tfevents.*")
            for event in tf.compat.v1.train.summary_iterator(str(path))
            for value in event.summary.value}
    assert {"epoch_accuracy", "roc_auc/macro", "gradcam_examples", "roc"} <= tags
    # report.html: the evaluation's numbers and plots, the run's record from beside the model.
    report = (out / "report.html").read_text()
    assert f"Accuracy <strong>{metrics['accuracy']:.3f}</strong>" in report
    assert report.count('<img src="data:image/png;base64,') == 4 + sum(
        (root / f"{curve}.png").exists() for curve in ("loss", "accuracy"))

    from mri_tfdata.data import kaggle_layout
    from mri_tfdata.evaluation import reports

    files = sorted((data / "Testing").rglob("*.jpg"))
    labels = [kaggle_layout.CLASS_NAMES.index(f.parent.name) for f in files]
    expected = reports.classification_metrics(labels, _expected(classifier, files),
                                              kaggle_layout.CLASS_NAMES)
    assert metrics["num_examples"] == 8
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert metrics["split"] == "test"
    assert metrics["macro_avg"]["roc_auc"] == pytest.approx(expected["macro_avg"]["roc_auc"],
                                                            abs=1e-3)

    # Existing results are not overwritten.
    code, _, err = _run("mri_tfdata.evaluate", f"--model={root / 'model.keras'}",
                        "--source=folder", f"--data_dir={data}", f"--out={out}")
    assert code == 1 and "already holds metrics.json" in err and "--overwrite" in err


@pytest.mark.integration
def test_evaluate_flag_errors_exit_2(tmp_path):
    code, _, err = _run("mri_tfdata.evaluate", f"--out={tmp_path}")
    assert code == 2 and "--model is required" in err and "Traceback" not in err


@pytest.mark.integration
def test_predict_good_corrupt_and_bomb_files(tiny, tmp_path):
    root, data, classifier = tiny
    good = sorted((data / "Testing").rglob("*.jpg"))[:2]
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:200])
    bomb = tmp_path / "bomb.png"
    # A header declaring 9000 x 9000 pixels (over the 8192 x 8192 limit) and no pixel data.
    bomb.write_bytes(image_trees.raw_png(9000, 9000, bit_depth=8, color_type=2))
    missing = tmp_path / "missing.jpg"
    files = [good[0], garbage, truncated, bomb, missing, good[1]]

    code, stdout, err = _run("mri_tfdata.predict", f"--model={root / 'model.keras'}",
                             "--batch_size=4", *map(str, files))
    assert code == 1, err[-3000:]
    assert "Skipping variable loading" not in err and "Traceback" not in err
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [pathlib.Path(line["file"]) for line in lines] == files
    for line in lines[1:5]:
        assert "error" in line and "class" not in line
        # In words: no exception class names or object reprs ("<_io.BytesIO object at 0x...>").
        assert "Error" not in line["error"] and " at 0x" not in line["error"], line
    assert lines[1]["error"].startswith("not an image file")
    assert "9000x9000" in lines[3]["error"]  # Refused from the header, before decoding.
    assert lines[4]["error"] == "cannot read it (No such file or directory)"

    expected = _expected(classifier, [good[0], good[1]])
    for line, probabilities in zip([lines[0], lines[5]], expected):
        assert list(line["probabilities"]) == ["glioma", "meningioma", "notumor", "pituitary"]
        np.testing.assert_allclose(list(line["probabilities"].values()), probabilities, atol=1e-5)
        assert line["class"] == list(line["probabilities"])[int(np.argmax(probabilities))]


def test_find_images_walks_folders_and_skips_junk(tmp_path):
    from mri_tfdata import predict

    folder = tmp_path / "scans"
    for name in ("a/b/deep.jpg", "top.PNG", "c.jpeg", ".hidden/x.jpg", "a/.DS_Store",
                 "Thumbs.db", "notes.txt", "a/.ipynb_checkpoints/y.jpg"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    single = tmp_path / "single.gif"  # named explicitly: tried whatever its suffix
    found = predict.find_images([folder, single, tmp_path / "empty"])
    assert found == [folder / "a/b/deep.jpg", folder / "c.jpeg", folder / "top.PNG", single,
                     tmp_path / "empty"]


@pytest.mark.integration
def test_predict_folder_to_csv_and_jsonl(tiny, tmp_path):
    root, data, classifier = tiny
    folder = tmp_path / "scans"
    for i, image in enumerate(sorted((data / "Testing").rglob("*.jpg"))[:3]):
        target = folder / ("nested" if i else "") / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    expected_files = sorted(folder.rglob("*.jpg"))
    csv_out = tmp_path / "out" / "results.csv"
    code, stdout, err = _run("mri_tfdata.predict", f"--model={root}", f"--output={csv_out}",
                             "--batch_size=2", str(folder), str(tmp_path / "empty"))
    assert code == 1, err[-3000:]  # the empty folder gets an error row
    assert stdout.strip() == str(csv_out)
    with open(csv_out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "class", "glioma", "meningioma", "notumor", "pituitary",
                             "error"]
    assert [pathlib.Path(r["file"]) for r in rows] == [*expected_files, tmp_path / "empty"]
    probabilities = _expected(classifier, expected_files)
    for row, p in zip(rows, probabilities):
        np.testing.assert_allclose([float(row[n]) for n in ("glioma", "meningioma", "notumor",
                                                            "pituitary")], p, atol=1e-5)
        assert row["error"] == ""
    assert rows[-1]["class"] == "" and "no .jpg" in rows[-1]["error"]

    jsonl_out = tmp_path / "results.jsonl"
    code, stdout, err = _run("mri_tfdata.predict", f"--model={root}", f"--output={jsonl_out}",
                             str(folder))
    assert code == 0, err[-3000:]
    lines = [json.loads(line) for line in jsonl_out.read_text().splitlines()]
    assert [pathlib.Path(line["file"]) for line in lines] == expected_files
    # An existing output is not replaced without --overwrite; a wrong suffix is a usage error.
    code, _, err = _run("mri_tfdata.predict", f"--model={root}", f"--output={jsonl_out}",
                        str(folder))
    assert code == 1 and "already exists" in err
    code, _, err = _run("mri_tfdata.predict", f"--model={root}", "--output=x.txt", str(folder))
    assert code == 2 and ".jsonl or .csv" in err


@pytest.mark.integration
def test_predict_gradcam_writes_one_overlay_per_image_and_names_the_bad_one(tiny, tmp_path):
    root, data, classifier = tiny
    image = min((data / "Testing").rglob("*.jpg"))
    files = [tmp_path / "a" / "scan.jpg", tmp_path / "b" / "scan.jpg", tmp_path / "bad.jpg"]
    for file in files[:2]:
        file.parent.mkdir()
        file.write_bytes(image.read_bytes())
    files[2].write_bytes(b"this is not an image")
    cams = tmp_path / "cams"
    code, stdout, err = _run("mri_tfdata.predict", f"--model={root}", f"--gradcam={cams}",
                             *map(str, files))
    assert code == 1 and "Traceback" not in err, err[-3000:]
    lines = [json.loads(line) for line in stdout.splitlines()]
    # One overlay per readable image, under distinct names; the unreadable one is skipped and
    # reported by name.
    assert [line.get("gradcam") for line in lines] == [str(cams / "scan.png"),
                                                        str(cams / "scan-2.png"), None]
    assert sorted(p.name for p in cams.iterdir()) == ["scan-2.png", "scan.png"]
    for overlay in cams.iterdir():
        assert overlay.read_bytes()[:4] == b"\x89PNG" and overlay.stat().st_size > 10_000
    assert "error" in lines[2] and f"Cannot classify {files[2]}" in err
    # The classes are still those of the model.
    expected = _expected(classifier, files[:1])[0]
    assert lines[0]["class"] == lines[1]["class"] == list(lines[0]["probabilities"])[
        int(np.argmax(expected))]

    # Overlays already there are not replaced without --overwrite ...
    code, _, err = _run("mri_tfdata.predict", f"--model={root}", f"--gradcam={cams}",
                        str(files[0]))
    assert code == 1 and "already holds 1 of the overlay files this command would write " \
        "(scan.png)" in err
    assert "--overwrite" in err and "Traceback" not in err
    # ... and with it, a CSV names each overlay, or why there is none.
    code, stdout, err = _run("mri_tfdata.predict", f"--model={root}", f"--gradcam={cams}",
                             "--overwrite", f"--output={tmp_path / 'out.csv'}", *map(str, files))
    assert code == 1, err[-3000:]
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["gradcam"] for r in rows] == [str(cams / "scan.png"), str(cams / "scan-2.png"), ""]
    assert rows[2]["error"] and not rows[0]["error"] and rows[0]["gradcam_error"] == ""
    # A file where the folder should be is a usage error.
    code, _, err = _run("mri_tfdata.predict", f"--model={root}", f"--gradcam={files[2]}",
                        str(files[0]))
    assert code == 2 and "is a file" in err


@pytest.mark.integration
def test_predict_and_evaluate_refuse_a_model_that_is_not_ours(tiny, tmp_path):
    import keras

    root, data, _ = tiny
    # A 4-class Keras model of another architecture: plausible, but not one of ours.
    foreign = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),
                                keras.layers.Dense(4, activation="softmax")])
    path = tmp_path / "foreign.keras"
    foreign.save(path)
    code, stdout, err = _run("mri_tfdata.predict", f"--model={path}",
                             str(sorted((data / "Testing").rglob("*.jpg"))[0]))
    assert code == 1 and stdout == ""
    assert f"--model={path} is a Keras model, but not one written by mri_tfdata.train" in err
    assert "Traceback" not in err
    code, _, err = _run("mri_tfdata.evaluate", f"--model={path}", "--source=folder",
                        f"--data_dir={data}", f"--out={tmp_path / 'eval'}")
    assert code == 1 and "not one written by mri_tfdata.train" in err and "Traceback" not in err


@pytest.mark.integration
def test_load_classifier_explains_every_refusal(tiny, tmp_path):
    import zipfile

    import keras

    from mri_tfdata.core.errors import UserError
    from mri_tfdata.serving import model_file

    root, _, _ = tiny
    not_zip = tmp_path / "text.keras"
    not_zip.write_text("hello")
    # In a library call the message names the parameter (mri-predict says --model instead).
    with pytest.raises(UserError, match=f"model_path='{not_zip}' is not a Keras model file"):
        model_file.load_classifier(not_zip)
    # A model.keras of mri_tfdata 0.1 (custom preprocessing layer, no metadata).
    legacy = tmp_path / "run" / "model.keras"
    legacy.parent.mkdir()
    with zipfile.ZipFile(legacy, "w") as archive:
        archive.writestr("config.json", '{"class_name": "mri_tfdata>ResNetPreprocess"}')
    with pytest.raises(UserError, match=r"before 0\.2\.0.*flagfile=.*run/flags\.txt --overwrite"):
        model_file.load_classifier(legacy)
    # Our metadata on a model that does not match it.
    other, damaged = tmp_path / "other.keras", tmp_path / "damaged.keras"
    keras.Sequential([keras.Input((SIZE, SIZE, 3), dtype="uint8"), keras.layers.Flatten(),
                      keras.layers.Dense(4)]).save(other)
    damaged.write_bytes(other.read_bytes())
    with zipfile.ZipFile(root / "model.keras") as ours, zipfile.ZipFile(other, "a") as archive:
        archive.writestr(model_file.METADATA_FILE, ours.read(model_file.METADATA_FILE))
    with pytest.raises(UserError, match="does not match its own mri_tfdata.json"):
        model_file.load_classifier(other)
    with zipfile.ZipFile(damaged, "a") as archive:
        archive.writestr(model_file.METADATA_FILE, "{not json")
    with pytest.raises(UserError, match="damaged"):
        model_file.load_classifier(damaged)


@pytest.mark.integration
def test_predict_refuses_missing_model(tmp_path):
    code, _, err = _run("mri_tfdata.predict", f"--model={tmp_path / 'nope.keras'}", "x.jpg")
    assert code == 1 and "is not a file" in err and "Traceback" not in err


def test_predict_keeps_every_result_when_the_output_cannot_be_written(tmp_path, monkeypatch,
                                                                       capsys):
    import errno

    from mri_tfdata import predict
    from mri_tfdata.core import atomic

    results = [{"file": "a.jpg", "class": "glioma", "probabilities": {"glioma": 1.0}},
               {"file": "b.png", "error": "not an image"}]

    def full(path, content):
        raise atomic.disk_error(path, OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(atomic, "write_atomic", full)
    out = tmp_path / "out.csv"
    with pytest.raises(atomic.DiskError) as error:
        predict.write_output(out, results, ["glioma"])
    message = str(error.value)
    assert f"Cannot write {out}: No space left on device" in message
    assert "2 results are printed above on stdout" in message
    # Nothing already classified is lost: every result is on stdout.
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == results


@pytest.mark.integration
def test_predict_refuses_an_output_it_cannot_write_before_classifying(tmp_path):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "out.jsonl"
    # The model does not exist: the output is checked first, before any work.
    code, stdout, err = _run("mri_tfdata.predict", f"--model={tmp_path / 'none.keras'}",
                             f"--output={out}", str(tmp_path))
    assert code == 1 and stdout == "", err
    assert err.startswith(f"error: Cannot write {out}: Not a directory") and "Traceback" not in err
