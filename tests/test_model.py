"""Tests for mri_tfdata.model.architecture: dtypes, preprocessing, frozen BatchNorm, fine-tuning, saving."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from mri_tfdata.core.errors import UserError
from mri_tfdata.model import architecture, optimization

SIZE = 32  # ResNet50's minimum input size keeps every test fast.


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def labels():
    return np.arange(8) % 4


def _classifier(augment=False, standardize=False):
    keras.utils.set_random_seed(1)
    backbone = architecture.build_backbone(image_size=SIZE, weights="none")
    head = architecture.build_head(hidden_units=(16, 8), standardize=standardize)
    return architecture.build_classifier(backbone, head, augment=augment)


def _fit_one_step(classifier, images, labels):
    optimization.compile_model(classifier, learning_rate=1e-2)
    classifier.run_eagerly = True  # Tracing ResNet50's train step costs more than one eager step.
    classifier.fit(images, labels, batch_size=8, epochs=1, verbose=0)


def _bn_stats(classifier):
    resnet = classifier.get_layer("backbone").get_layer("resnet50")
    return [
        np.array(w) for layer in resnet.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in (layer.moving_mean, layer.moving_variance)
    ]


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_shapes_dtypes_and_preprocessing_under_each_policy(policy, images):
    keras.mixed_precision.set_global_policy(policy)
    classifier = _classifier(standardize=True)
    features = classifier.get_layer("backbone")(images)
    probabilities = classifier(images)
    assert classifier.input.dtype == "uint8"
    assert features.shape == (8, architecture.FEATURE_DIM) and features.dtype == "float32"
    assert probabilities.shape == (8, 4) and probabilities.dtype == "float32"
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, rtol=1e-5)
    resnet = classifier.get_layer("backbone").get_layer("resnet50")
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    assert resnet.get_layer("conv1_conv").compute_dtype == compute_dtype
    assert classifier.get_layer("head").get_layer("dense_0").compute_dtype == compute_dtype
    # Preprocessing inside the model is exactly preprocess_input, in float32 under every policy.
    backbone = classifier.get_layer("backbone")
    preprocess = keras.Model(backbone.input, backbone.get_layer("to_channels_last").output)
    expected = keras.applications.resnet50.preprocess_input(images.astype("float32"))
    np.testing.assert_array_equal(preprocess(images), expected)
    # Augmented images are fractional: bitwise equal on those too.
    fractional = images.astype("float32") * np.float32(0.37) + np.float32(0.123)
    np.testing.assert_array_equal(
        preprocess(fractional), keras.applications.resnet50.preprocess_input(fractional.copy()))
    # Built-in layers add no weight: the feature cache's fingerprint is ResNet50's alone.
    assert len(backbone.weights) == len(backbone.get_layer("resnet50").weights)
    # Caffe style: channels reversed to BGR and the ImageNet mean subtracted, no scaling.
    bgr_minus_mean = images[0, 0, 0, ::-1] - np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(expected[0, 0, 0], bgr_minus_mean, rtol=1e-6)


@pytest.mark.integration
def test_frozen_backbone_keeps_batchnorm_in_inference_mode(images, labels):
    classifier = _classifier()
    backbone = classifier.get_layer("backbone")
    assert backbone.trainable_weights == []
    assert len(classifier.trainable_weights) == 6  # three Dense layers of the head
    np.testing.assert_array_equal(backbone(images, training=True), backbone(images, training=False))
    head = classifier.get_layer("head")
    stats, head_before = _bn_stats(classifier), [np.array(w) for w in head.weights]
    _fit_one_step(classifier, images, labels)
    for before, after in zip(stats, _bn_stats(classifier)):
        np.testing.assert_array_equal(before, after)
    assert any(
        not np.array_equal(before, np.array(after))
        for before, after in zip(head_before, head.weights)
    )


@pytest.mark.integration
def test_unfreeze_top_blocks_trains_only_those_convs_and_keeps_batchnorm(images, labels):
    classifier = _classifier()
    assert architecture.unfreeze_top_blocks(classifier, 2) == ["conv5_block3", "conv5_block2"]
    resnet = classifier.get_layer("backbone").get_layer("resnet50")
    trainable = [layer for layer in resnet.layers if layer.trainable_weights]
    assert trainable
    assert all(layer.name.startswith(("conv5_block3_", "conv5_block2_")) for layer in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    conv = resnet.get_layer("conv5_block3_3_conv")
    frozen_conv = resnet.get_layer("conv5_block1_1_conv")
    conv_before, frozen_before = np.array(conv.kernel), np.array(frozen_conv.kernel)
    stats = _bn_stats(classifier)
    _fit_one_step(classifier, images, labels)
    assert not np.array_equal(conv_before, np.array(conv.kernel))
    np.testing.assert_array_equal(frozen_before, np.array(frozen_conv.kernel))
    for before, after in zip(stats, _bn_stats(classifier)):
        np.testing.assert_array_equal(before, after)
    assert architecture.unfreeze_top_blocks(classifier, 0) == []
    assert classifier.get_layer("backbone").trainable_weights == []
    with pytest.raises(UserError, match="ResNet50 has 16"):
        architecture.unfreeze_top_blocks(classifier, 17)


@pytest.mark.integration
def test_augmentation_runs_only_in_training(images):
    augmented = _classifier(augment=True)
    plain = architecture.build_classifier(augmented.get_layer("backbone"), augmented.get_layer("head"))
    np.testing.assert_array_equal(augmented(images, training=False), plain(images))
    assert not np.array_equal(augmented(images, training=True), plain(images))


@pytest.mark.integration
def test_keras_file_roundtrip_in_safe_mode(tmp_path, images):
    classifier = _classifier(augment=True, standardize=True)
    head = classifier.get_layer("head")
    features = np.array(classifier.get_layer("backbone")(images))
    assert architecture.adapt_standardization(head, features)
    path = tmp_path / "model.keras"
    classifier.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(
        loaded(images, training=False), classifier(images, training=False)
    )
    mean = loaded.get_layer("head").get_layer("standardize").mean
    np.testing.assert_allclose(np.ravel(mean), features.mean(axis=0), rtol=1e-4, atol=1e-6)


def test_standardization_floors_the_spread_of_dead_features():
    # Feature 0 is constant over training (a dead unit of a random backbone); a new image that
    # moves it by 1e-3 must not become a huge input to the head.
    rng = np.random.default_rng(0)
    train = rng.normal(size=(64, architecture.FEATURE_DIM)).astype("float32")
    train[:, 0] = 0.5
    head = architecture.build_head(hidden_units=(8,), standardize=True)
    assert architecture.adapt_standardization(head, train)
    layer = head.get_layer("standardize")
    probe = train[:1].copy()
    probe[0, 0] += 1e-3
    standardized = np.asarray(layer(probe))
    assert abs(standardized[0, 0]) < 1.0
    # The informative features are standardised as usual.
    np.testing.assert_allclose(np.asarray(layer(train)).std(axis=0)[1:], 1.0, rtol=1e-2)


def test_adapt_without_standardize_is_a_no_op():
    assert not architecture.adapt_standardization(architecture.build_head(), np.zeros((2, architecture.FEATURE_DIM)))


_OFFLINE_BACKBONE = """
from mri_tfdata.model import architecture
from mri_tfdata.core.errors import UserError
try:
    architecture.build_backbone(image_size=32, weights="imagenet")
except UserError as e:
    print(" ".join(str(e).split()))
"""


@pytest.mark.integration
def test_imagenet_offline_without_cache_says_how_to_supply_weights(tmp_path):
    # A proxy on the discard port makes any download fail at once, with or without a network;
    # KERAS_HOME (read when Keras is imported, hence the subprocess) is an empty cache.
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9"}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    result = subprocess.run([sys.executable, "-c", _OFFLINE_BACKBONE], capture_output=True,
                            text=True, env=env, timeout=120)
    message = result.stdout
    assert "Cannot get the ImageNet ResNet50 weights" in message, result.stderr[-2000:]
    assert f"weights='/path/to/{architecture.WEIGHTS_FILE}'" in message
    assert "weights='none'" in message
    assert not (tmp_path / "models" / architecture.WEIGHTS_FILE).exists()


@pytest.mark.integration
def test_weights_from_a_file_none_and_bad_paths(tmp_path, images):
    keras.utils.set_random_seed(2)
    source = architecture.build_backbone(image_size=SIZE, weights="none")
    path = tmp_path / "resnet50.weights.h5"
    source.get_layer("resnet50").save_weights(path)
    keras.utils.set_random_seed(3)
    loaded = architecture.build_backbone(image_size=SIZE, weights=str(path))
    np.testing.assert_allclose(loaded(images), source(images), rtol=1e-5, atol=1e-5)
    keras.utils.set_random_seed(3)
    random = architecture.build_backbone(image_size=SIZE, weights="None")
    assert not np.allclose(random(images), source(images))
    with pytest.raises(UserError, match="neither 'imagenet', 'none' nor an existing file"):
        architecture.build_backbone(image_size=SIZE, weights=str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_text("not weights")
    with pytest.raises(UserError, match="Cannot load ResNet50 weights"):
        architecture.build_backbone(image_size=SIZE, weights=str(junk))
