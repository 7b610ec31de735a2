"""Fast tests of mri_tfdata.serving.model_file without a ResNet: image reading, refusals, saving.

The round trip of a real classifier is in test_export.py and test_evaluate_predict.py.
"""

import zipfile

import image_trees
import keras
import numpy as np
import pytest

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import images
from mri_tfdata.serving import model_file


def test_load_image_resizes_to_a_uint8_rgb_square_and_refuses_what_is_not_an_image(tmp_path):
    tree = image_trees.write_tree(tmp_path, train_per_class=0, test_per_class=1, size=48)
    image = model_file.load_image(sorted((tree / "Testing").rglob("*.png"))[0], image_size=32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image_trees.labels_from_pixels(image[None]).tolist() == [0]  # glioma's colour kept
    grey16 = image_trees.write(tmp_path / "grey16.png", image_trees.gray16_png(65535))
    assert model_file.load_image(grey16, image_size=16).min() == 255  # scaled to 8 bits
    with pytest.raises(images.CorruptImageError):
        model_file.load_image(image_trees.write(tmp_path / "x.jpg", b"not an image"),
                              image_size=32)


def test_load_classifier_refuses_files_that_are_not_our_models(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        model_file.load_classifier(tmp_path / "missing.keras")
    not_zip = tmp_path / "text.keras"
    not_zip.write_text("hello")
    with pytest.raises(UserError, match=str(not_zip)):
        model_file.load_classifier(not_zip)
    no_metadata = tmp_path / "plain.keras"
    with zipfile.ZipFile(no_metadata, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(UserError, match=str(no_metadata)):
        model_file.load_classifier(no_metadata)


def _with_metadata(source, target, **changes):
    """A copy of the .keras file `source` at `target` whose mri_tfdata.json has `changes`."""
    import json

    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    metadata = json.loads(members[model_file.METADATA_FILE])
    metadata.update(changes)
    members[model_file.METADATA_FILE] = json.dumps(metadata).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return target


def _fake_model_file(tmp_path, class_names):
    """A .keras archive holding only the metadata: enough for the checks before Keras loads."""
    path = tmp_path / "fake.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(model_file.METADATA_FILE, "{}")
    return _with_metadata(path, tmp_path / "model.keras", format_version=1, image_size=32,
                          class_names=class_names)


@pytest.mark.parametrize("class_names, words", [
    (["glioma", "menin\ngioma", "notumor", "pituitary"], "control characters"),
    (["glioma\t", "meningioma", "notumor", "pituitary"], "control characters"),
    (["glioma"] * 4, "more than once"),
    (["glioma", "", "notumor", "pituitary"], "empty"),
    (["glioma", 3, "notumor", "pituitary"], "list of strings"),
    (["glioma"], "at least 2"),
])
def test_tampered_class_names_are_refused_in_one_paragraph_naming_the_file(tmp_path, class_names,
                                                                          words):
    path = _fake_model_file(tmp_path, class_names)
    with pytest.raises(UserError, match=words) as refused:
        model_file.load_classifier(path)
    message = str(refused.value)
    assert str(path) in message and model_file.METADATA_FILE in message
    assert "\n" not in message.replace(repr("menin\ngioma")[1:-1], "")


def test_prepare_pixels_is_the_input_contract():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (284, 324), np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    import tensorflow as tf

    want = tf.cast(tf.round(tf.image.resize(rgb, [64, 64], method="bilinear")), tf.uint8).numpy()
    for pixels in (grey, grey[..., None], rgb):
        np.testing.assert_array_equal(model_file.prepare_pixels(pixels, image_size=64), want)
    assert model_file.prepare_pixels(rgb[None], image_size=64).shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="uint8"):
        model_file.prepare_pixels(rgb.astype(np.float32), image_size=64)


@pytest.mark.integration
def test_metadata_that_disagrees_with_the_model_is_refused(trained_classifier, tmp_path):
    path, _ = trained_classifier
    saved = model_file.load_classifier(path)
    assert saved.class_names == tuple(image_trees.CLASS_NAMES)
    import json

    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read(model_file.METADATA_FILE))
    from mri_tfdata.data import decoding

    assert metadata["input_contract"] == decoding.INPUT_CONTRACT  # stored for users of the file
    for changes, words in (({"image_size": 64}, "takes 64 px"),
                           ({"class_names": ["a", "b", "c"]}, "predicts 3 classes"),
                           ({"class_names": list("abcde")}, "predicts 5 classes")):
        tampered = _with_metadata(path, tmp_path / "tampered.keras", **changes)
        with pytest.raises(UserError, match=words) as refused:
            model_file.load_classifier(tampered)
        assert str(tampered) in str(refused.value) and "\n" not in str(refused.value)


def test_the_model_as_saved_is_built_once_and_predicts_as_the_trained_one(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    backbone = keras.Model(inputs, pooled, name="backbone")
    features = keras.Input((3,))
    standardize = keras.layers.Normalization()
    head = keras.Model(features, keras.layers.Dense(2, activation="softmax")(
        standardize(features)), name="head")
    standardize.adapt(np.random.default_rng(0).normal(5, 3, (64, 3)).astype("float32"))
    head.compile(optimizer="adam", loss="sparse_categorical_crossentropy")  # as training does
    trained = keras.Model(inputs, head(backbone(inputs)))
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), np.uint8)
    builds = []
    clone = keras.models.clone_model
    monkeypatch.setattr(keras.models, "clone_model", lambda *a, **k: builds.append(1) or clone(
        *a, **k))
    saved = model_file.without_training_state(trained)
    # The optimizer is not saved: the compiled head is copied uncompiled; the rest is shared.
    assert saved is not trained and saved.get_layer("backbone") is backbone
    assert saved.get_layer("head") is not head and getattr(saved.get_layer("head"), "optimizer", None) is None
    # The copy computes as the trained model does, standardisation included.
    np.testing.assert_array_equal(saved(images), trained(images))
    built = len(builds)
    path = model_file.save_classifier(saved, tmp_path / "model.keras", class_names=("a", "b"))
    assert len(builds) == built  # saving the copy builds nothing more
    with zipfile.ZipFile(path) as archive:
        assert "optimizer" not in archive.read("config.json").decode()
        assert b"optimizer" not in archive.read("model.weights.h5")
    assert model_file.without_training_state(saved) is saved
    np.testing.assert_array_equal(model_file.load_classifier(path).model(images), trained(images))
