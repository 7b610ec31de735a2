"""End to end on a folder with its own classes (2 and 6): train, evaluate, predict, export, tune.

One tiny run per class count (module-scoped): 64 px, weights=None, 1 epoch, a few images.
"""

import json
import os
import subprocess
import sys

import image_trees
import numpy as np
import pytest

CLASS_SETS = {2: ("benign", "malignant"), 6: ("a1", "b2", "c3", "d4", "e5", "f6")}
COMMON = ["--image_size=64", "--precision=float32", "--strategy=default"]


def _run(tmp, module, *args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "XDG_CACHE_HOME": str(tmp / "cache")}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=400, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module", params=sorted(CLASS_SETS))
def run(request, tmp_path_factory):
    """(tmp folder, data folder, class names, model.keras) of one trained run."""
    names = CLASS_SETS[request.param]
    tmp = tmp_path_factory.mktemp(f"classes{request.param}")
    data = image_trees.write_tree(tmp / "data", train_per_class=5, test_per_class=1, size=32,
                                  fmt="jpg", class_names=names)
    _run(tmp, "mri_tfdata.train", "--source=folder", f"--data_dir={data}", *COMMON,
         "--weights=none", "--head_units=8", "--batch_size=4", "--epochs=1",
         f"--workdir={tmp / 'run'}")
    return tmp, data, names, tmp / "run" / "model.keras"


@pytest.mark.integration
def test_training_records_the_data_classes(run):
    _, _, names, model = run
    from mri_tfdata.serving import model_file

    saved = model_file.load_classifier(model)
    assert saved.class_names == names
    assert saved.model.output_shape == (None, len(names))
    metrics = json.loads((model.parent / "metrics.json").read_text())
    assert metrics["class_names"] == list(names)
    assert np.array(metrics["confusion_matrix"]).shape == (len(names), len(names))


@pytest.mark.integration
def test_evaluate_and_predict_use_the_data_classes(run):
    tmp, data, names, model = run
    out = tmp / "eval"
    _run(tmp, "mri_tfdata.evaluate", f"--model={model}", "--source=folder", f"--data_dir={data}",
         "--split=test", "--batch_size=4", f"--out={out}", "--bootstrap_resamples=10")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == list(names) and metrics["num_examples"] == len(names)
    assert set(metrics["per_class"]) == set(names)
    assert all(name in (out / "report.html").read_text() for name in names)
    _run(tmp, "mri_tfdata.predict", f"--model={model}", f"--output={tmp / 'p.jsonl'}",
         str(data / "Testing"))
    results = [json.loads(line) for line in (tmp / "p.jsonl").read_text().splitlines()]
    assert len(results) == len(names)
    assert all(r["class"] in names and set(r["probabilities"]) == set(names) for r in results)


@pytest.mark.integration
def test_export_serves_the_data_class_names(run):
    tmp, data, names, model = run
    _run(tmp, "mri_tfdata.export", f"--model={model}", f"--out={tmp / 'export'}")
    assert (tmp / "export/assets/class_names.txt").read_text().split() == list(names)
    import tensorflow as tf

    served = tf.saved_model.load(str(tmp / "export")).signatures["serve_bytes"]
    files = sorted((data / "Testing").glob("*/*.jpg"))
    result = served(image_bytes=tf.constant([f.read_bytes() for f in files]))
    assert result["probabilities"].shape == (len(files), len(names))
    assert {name.decode() for name in result["class_name"].numpy()} <= set(names)


@pytest.mark.integration
def test_tuning_searches_heads_with_the_data_class_count(run):
    tmp, data, names, _ = run
    _run(tmp, "tuning.search", "--source=folder", f"--data_dir={data}", *COMMON,
         "--weights=none", "--batch_size=4", "--batch_sizes=4", "--epochs=1", "--tuner=random",
         "--max_trials=1", "--finalists=1", "--selection_folds=2",
         f"--directory={tmp / 'tune'}", "--project_name=p")
    assert (tmp / "tune/p/selection.csv").exists()
