"""In-process runs of trainer.train(): the fast path, fine-tuning, the file cache, DataSpec."""

import collections
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import dataspec, sources
from mri_tfdata.evaluation import evaluator
from mri_tfdata.model import feature_cache, features
from mri_tfdata.model.architecture import ModelSpec
from mri_tfdata.serving import model_file
from mri_tfdata.training import trainer

SPEC = ModelSpec(image_size=32, weights="none", head_units=(16,))


def _train(data, tmp_path, name, **config):
    config = trainer.TrainConfig(**{"batch_size": 4, "epochs": 2, "learning_rate": 1e-3,
                                     "feature_cache": str(tmp_path / "features"), **config})
    keras.mixed_precision.set_global_policy("float32")
    return trainer.train(data=data, model_spec=SPEC, config=config,
                          workdir_path=tmp_path / name, strategy=tf.distribute.get_strategy(),
                          precision_policy="float32")


@pytest.mark.integration
def test_default_fast_path_trains_on_cached_features_and_evaluates_the_saved_model(data, tmp_path):
    result = _train(data, tmp_path, "fast", cache=str(tmp_path / "images"))
    assert result.history["epoch"] == [1, 2] and set(result.history["phase"]) == {"head"}
    # Train, validation and test features were each extracted once into the cache ...
    assert len(list((tmp_path / "features").glob("*.npz"))) == 3
    # ... and no image pipeline was built for nothing: no file cache, not even a partial one.
    assert not (tmp_path / "images").exists()
    metrics = json.loads((result.workdir / "metrics.json").read_text())
    assert metrics["num_examples"] == 8
    # The metrics are those of the saved model on the test images.
    saved = model_file.load_classifier(result.workdir / "model.keras").model
    test = data.open("test")
    direct = evaluator.head_probabilities(
        saved.get_layer("head"), feature_cache.load_or_extract(
            test, backbone=saved.get_layer("backbone"), image_size=32, batch_size=4,
            cache_dir=None).features)
    labels = np.array([label for _, label in test.dataset.as_numpy_iterator()])
    assert metrics["accuracy"] == pytest.approx(float(np.mean(direct.argmax(1) == labels)))
    picked = np.clip(direct[np.arange(len(labels)), labels], 1e-7, 1)
    assert metrics["loss"] == pytest.approx(float(-np.log(picked).mean()), rel=1e-4)
    # errors.csv names exactly the misclassified test files.
    wrong = {test.names[i] for i in np.flatnonzero(direct.argmax(1) != labels)}
    errors = (result.workdir / "errors.csv").read_text().splitlines()
    assert errors[0] == "file,true_class,predicted_class,probability"
    assert {line.split(",")[0] for line in errors[1:]} == wrong
    for plot in evaluator.PLOTS:
        assert (result.workdir / f"{plot}.png").stat().st_size > 10_000
    # The test results are in TensorBoard beside the training curves, at the last epoch.
    tags = {}
    for path in (result.workdir / "logs" / "test").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update({value.tag: event.step for value in event.summary.value})
    assert {tag: tags.get(tag) for tag in ("epoch_accuracy", "roc_auc/glioma", "gradcam_examples",
                                           "confusion_matrix", "roc")} == dict.fromkeys(
        ("epoch_accuracy", "roc_auc/glioma", "gradcam_examples", "confusion_matrix", "roc"), 1)
    assert (result.workdir / "logs" / "train").is_dir()
    # The run's report, written last, holds its accuracy and all six plots.
    report = (result.workdir / "report.html").read_text()
    assert f"Accuracy <strong>{metrics['accuracy']:.3f}</strong>" in report
    assert report.count('<img src="data:image/png;base64,') == 6


@pytest.mark.integration
def test_fine_tuning_trains_the_top_block_end_to_end(data, tmp_path):
    result = _train(data, tmp_path, "fine", epochs=1, fine_tune_blocks=1, fine_tune_epochs=1,
                    fine_tune_learning_rate=1e-4, max_steps_per_epoch=2)
    assert result.history["phase"] == ["head", "fine_tune"]
    assert result.history["epoch"] == [1, 2]
    keras.utils.set_random_seed(0)  # The run's seed: the same initial random backbone.
    from mri_tfdata.model import architecture
    initial = architecture.build_backbone(image_size=32, weights="none").get_layer("resnet50")
    trained = model_file.load_classifier(result.workdir / "model.keras").model.get_layer(
        "backbone").get_layer("resnet50")
    for layer, moved in (("conv5_block3_3_conv", True), ("conv5_block2_3_conv", False),
                         ("conv5_block3_3_bn", False)):
        same = all(np.array_equal(a, b) for a, b in zip(
            initial.get_layer(layer).get_weights(), trained.get_layer(layer).get_weights()))
        assert same is not moved, layer


@pytest.mark.integration
def test_end_to_end_with_a_file_cache_writes_it_once_and_reads_it_back(data, tmp_path):
    _train(data, tmp_path, "first", feature_cache="off", cache=str(tmp_path / "images"))
    # A writer's partial folder goes when its process ends; the caches are published whole.
    caches = {p for p in (tmp_path / "images").iterdir() if ".partial-" not in p.name}
    partials = {p for p in (tmp_path / "images").iterdir() if ".partial-" in p.name}
    assert len(caches) == 2  # train and validation
    assert all((cache / "manifest.json").exists() for cache in caches)
    second = _train(data, tmp_path, "second", feature_cache="off", cache=str(tmp_path / "images"))
    # The second run read the caches: it started no writer of its own.
    assert {p for p in (tmp_path / "images").iterdir() if ".partial-" in p.name} == partials
    assert second.history["epoch"] == [1, 2] and np.isfinite(second.history["loss"]).all()


def test_dataspec_opens_each_source_and_names_what_is_missing(data, tmp_path, monkeypatch):
    assert data.synthetic_root().name.startswith("train8-test2-32px-")
    train = data.open("train[:50%]")
    assert train.num_examples == 16 and train.class_names == sources.kaggle_layout.CLASS_NAMES
    assert "synthetic" in data.describe() and str(data.synthetic_root()) in data.describe()
    folder = dataspec.DataSpec(source="folder", data_dir=str(data.synthetic_root()))
    assert folder.open("test").num_examples == 8
    with pytest.raises(UserError, match="source='folder' needs data_dir"):
        dataspec.DataSpec(source="folder").open("train")
    with pytest.raises(UserError, match="is not built in .*mri-build --config"):
        dataspec.DataSpec(source="tfds", tfds_data_dir=str(tmp_path)).open("train")
    # Without a data_dir the message names TFDS's default folder as a path, and its command
    # runs as printed: no "~" (no shell expands it after --data_dir=), no --data_dir at all.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "default"))
    with pytest.raises(UserError) as not_built:
        dataspec.DataSpec(source="tfds").open("train")
    message = str(not_built.value)
    assert f"is not built in {tmp_path / 'default'}." in message
    assert "`mri-build --config=default --manual_dir=DIR`" in message
    assert "~" not in message
    with pytest.raises(ValueError, match="source must be one of"):
        dataspec.DataSpec(source="s3")


@pytest.mark.parametrize("path", ["fast", "fine_tuned"])
def test_each_split_is_extracted_at_most_once_per_run(data, tmp_path, monkeypatch, path):
    loads, extractions = collections.Counter(), []
    load, extract = feature_cache.load_or_extract, features.extract_features

    def counted_load(source, **kwargs):
        loads[source.cache_id] += 1
        return load(source, **kwargs)

    def counted_extract(*args, **kwargs):
        extractions.append(kwargs.get("num_examples"))
        return extract(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "load_or_extract", counted_load)
    monkeypatch.setattr(features, "extract_features", counted_extract)
    # The saved model is checked as it was written, never loaded back: one model built to save.
    reloads, load_model = [], keras.saving.load_model
    monkeypatch.setattr(keras.saving, "load_model",
                        lambda *a, **k: reloads.append(a) or load_model(*a, **k))
    # The fine-tuned run fits the head end to end; its standardisation reads the training features.
    extra = ({} if path == "fast" else dict(epochs=1, fine_tune_blocks=1, fine_tune_epochs=1,
                                            max_steps_per_epoch=1))
    result = _train(data, tmp_path, path, **extra)
    assert result.metrics["num_examples"] == 8
    # After fine-tuning the validation split is extracted once more, by the fine-tuned backbone, to
    # calibrate the prediction sets; still once per split.
    splits = ("train", "validation", "test")
    assert sorted(loads.values()) == [1] * len(splits), loads  # each split once, none again
    assert len(extractions) == len(splits)  # a fresh cache: every load was an extraction
    assert reloads == []
