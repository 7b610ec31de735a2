"""Tests of the serving export (mri-export) and of model.keras loading with Keras alone."""

import pathlib
import subprocess
import sys

import image_trees
import numpy as np
import pytest
import tensorflow as tf

# Every test here builds ResNet50 and most use the export made by the command in a subprocess.
pytestmark = pytest.mark.integration

SIZE = 32  # the model's input
ORIGINAL = 48  # the files' size: another size than the model's
CLASS_NAMES = ("alpha", "beta", "gamma", "delta")  # not the Kaggle names: read from the model


def _run(*args):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, " ".join(proc.stderr.split())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 32 px model with augmentation and dropout saved as model.keras, exported by the command,
    and image files of 48 px (JPEG and PNG) with their class labels."""
    import keras

    from mri_tfdata.model import architecture
    from mri_tfdata.serving import model_file

    root = tmp_path_factory.mktemp("export")
    files = []
    for fmt in ("jpg", "png"):
        tree = image_trees.write_tree(root / fmt, train_per_class=0, test_per_class=2,
                                      size=ORIGINAL, fmt=fmt)
        files += sorted((tree / "Testing").rglob(f"*.{fmt}"))
    labels = np.array([image_trees.CLASS_NAMES.index(f.parent.name) for f in files])
    keras.utils.set_random_seed(1)
    backbone = architecture.build_backbone(image_size=SIZE, weights="none")
    head = architecture.build_head(hidden_units=(8,), dropout=0.5, standardize=True)
    pixels = np.stack([model_file.load_image(f, image_size=SIZE) for f in files])
    architecture.adapt_standardization(head, np.asarray(backbone(pixels)))  # spread-out predictions
    classifier = architecture.build_classifier(backbone, head, augment=True)
    path = model_file.save_classifier(classifier, root / "model.keras", class_names=CLASS_NAMES)

    code, stdout, err = _run("-m", "mri_tfdata.export", f"--model={path}")
    assert code == 0, err[-3000:]
    export_dir = root / "export"
    assert stdout.strip() == str(export_dir)
    # Quiet: neither TensorFlow's start-up block nor the SavedModel chatter.
    assert "oneDNN" not in err and "renamed" not in err and "fingerprint" not in err, err[-3000:]
    return root, path, export_dir, files, labels


def test_export_command_refuses_to_replace_an_export(exported):
    _, path, export_dir, _, _ = exported
    code, _, err = _run("-m", "mri_tfdata.export", f"--model={path}", f"--out={export_dir}")
    assert code == 1 and "already exists" in err and "--overwrite" in err
    assert "Traceback" not in err


def test_signatures_inputs_outputs_and_class_names(exported):
    _, _, export_dir, _, _ = exported
    served = tf.saved_model.load(str(export_dir))
    assert set(served.signatures) == {"serve", "serve_bytes", "serving_default"}
    inputs = {name: served.signatures[name].structured_input_signature[1]
              for name in served.signatures}
    assert inputs["serve"] == {"images": tf.TensorSpec([None, None, None, 3], tf.uint8, "images")}
    expected_bytes = {"image_bytes": tf.TensorSpec([None], tf.string, "image_bytes")}
    assert inputs["serve_bytes"] == inputs["serving_default"] == expected_bytes
    for signature in served.signatures.values():
        assert set(signature.structured_outputs) == {"probabilities", "class_index", "class_name"}
    assert (export_dir / "assets" / "class_names.txt").read_text().split() == list(CLASS_NAMES)


def test_served_at_any_size_and_as_bytes_agrees_with_predict(exported):
    from mri_tfdata import predict
    from mri_tfdata.data import decoding
    from mri_tfdata.serving import model_file

    _, path, export_dir, files, labels = exported
    saved = model_file.load_classifier(path)
    predicted = list(predict.classify_files(saved, files, batch_size=5))
    expected = np.array([list(r["probabilities"].values()) for r in predicted])
    served = tf.saved_model.load(str(export_dir))
    originals = tf.stack([decoding.decode(tf.constant(f.read_bytes())) for f in files])
    assert originals.shape[1:3] == (ORIGINAL, ORIGINAL)
    encoded = tf.constant([f.read_bytes() for f in files])
    answers = {
        "serve, original size": served.signatures["serve"](images=originals),
        "serve, training size": served.signatures["serve"](images=decoding.resize(originals, SIZE)),
        "serve_bytes": served.signatures["serve_bytes"](image_bytes=encoded),
        "serving_default": served.signatures["serving_default"](image_bytes=encoded),
    }
    accuracy = np.mean([CLASS_NAMES.index(r["class"]) == y for r, y in zip(predicted, labels)])
    for name, answer in answers.items():
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5, err_msg=name)
        assert [n.decode() for n in answer["class_name"].numpy()] == [r["class"] for r in
                                                                      predicted], name
        np.testing.assert_array_equal(answer["class_index"], np.argmax(expected, axis=1))
        assert np.mean(answer["class_index"].numpy() == labels) == accuracy, name


def test_served_model_is_deterministic_safe_and_answers_empty_requests(exported):
    _, _, export_dir, files, _ = exported
    serve_bytes = tf.saved_model.load(str(export_dir)).signatures["serve_bytes"]
    encoded = tf.constant([f.read_bytes() for f in files[:4]])
    # Augmentation and dropout are off when serving: the same request, the same answer.
    np.testing.assert_array_equal(serve_bytes(image_bytes=encoded)["probabilities"],
                                  serve_bytes(image_bytes=encoded)["probabilities"])
    empty = serve_bytes(image_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, len(CLASS_NAMES))
    # A header declaring 9000 x 9000 pixels is refused before anything is decoded.
    bomb = image_trees.raw_png(9000, 9000, bit_depth=8, color_type=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="declares more than"):
        serve_bytes(image_bytes=tf.constant([bomb]))


def test_export_stores_the_weights_once(exported):
    _, path, export_dir, _, _ = exported
    export_bytes = sum(f.stat().st_size for f in export_dir.rglob("*") if f.is_file())
    # Today the export holds its weights once (~model.keras plus ~1.5 MB of graph); tracking the
    # model as well would store every weight twice (keras-team/keras#23553).
    assert export_bytes < 1.05 * path.stat().st_size, (export_bytes, path.stat().st_size)


_LOAD_WITH_KERAS_ONLY = """
import sys
import keras
import numpy as np
model = keras.saving.load_model(sys.argv[1])  # safe mode: built-in layers only
assert not [m for m in sys.modules if m.startswith("mri_tfdata")]
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


def test_model_keras_loads_with_keras_alone_in_a_fresh_interpreter(exported, tmp_path):
    from mri_tfdata.serving import model_file

    _, path, _, files, _ = exported
    saved = model_file.load_classifier(path)
    pixels = np.stack([model_file.load_image(f, image_size=SIZE) for f in files])
    np.save(tmp_path / "x.npy", pixels)
    code, _, err = _run("-c", _LOAD_WITH_KERAS_ONLY, str(path), str(tmp_path / "x.npy"),
                        str(tmp_path / "y.npy"))
    assert code == 0, err[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"),
                               saved.model.predict(pixels, verbose=0), atol=1e-6)
    assert saved.class_names == CLASS_NAMES and saved.image_size == SIZE
    assert pathlib.Path(saved.path) == path


def test_model_keras_holds_no_optimizer_state(trained_classifier):
    import zipfile

    import keras

    from mri_tfdata.serving import model_file

    # Trained on both of training's paths: the head fitted on features, the whole classifier
    # compiled and fitted (see conftest).
    path, classifier = trained_classifier
    assert b"optimizer" not in zipfile.ZipFile(path).read("model.weights.h5")
    loaded = model_file.load_classifier(path).model
    images = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    np.testing.assert_array_equal(loaded(images, training=False),
                                  classifier(images, training=False))
    assert not getattr(loaded, "optimizer", None) and isinstance(loaded, keras.Model)


def _encoded(fmt: str) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name, data", [
    ("empty", lambda: b""), ("text", lambda: b"hello, a text file\n"),
    ("bmp", lambda: _encoded("BMP")), ("webp", lambda: _encoded("WEBP"))])
def test_serve_bytes_refuses_what_is_not_a_jpeg_or_png_in_words(exported, name, data):
    serve_bytes = tf.saved_model.load(str(exported[2])).signatures["serve_bytes"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG or PNG image") as e:
        serve_bytes(image_bytes=tf.constant([data()]))
    assert "pos 16" not in e.value.message and "67108864" not in e.value.message


@pytest.mark.parametrize("name", sorted(image_trees.damaged_jpegs()))
def test_serve_bytes_refuses_damaged_jpegs_in_words(exported, name):
    serve_bytes = tf.saved_model.load(str(exported[2])).signatures["serve_bytes"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="damaged JPEG"):
        serve_bytes(image_bytes=tf.constant([image_trees.damaged_jpegs()[name]]))


def test_real_size_jpegs_get_one_answer_from_serve_serve_bytes_and_predict(exported, tmp_path):
    import io

    from PIL import Image

    from mri_tfdata import predict
    from mri_tfdata.serving import model_file

    _, path, export_dir, _, _ = exported
    served = tf.saved_model.load(str(export_dir))
    saved = model_file.load_classifier(path)
    for i, (height, width, grey) in enumerate([(512, 512, False), (512, 512, True),
                                               (284, 324, False), (284, 324, True)]):
        data = image_trees.slice_like_jpeg(height, width, grey=grey, seed=i)
        file = image_trees.write(tmp_path / f"{i}.jpg", data)
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        answers = {
            "serve_bytes": served.signatures["serve_bytes"](image_bytes=tf.constant([data])),
            "serve": served.signatures["serve"](images=tf.constant(pixels[None])),
            "keras + prepare_pixels": {"probabilities": saved.model.predict(
                model_file.prepare_pixels(pixels, image_size=SIZE)[None], verbose=0)}}
        (result,) = predict.classify_files(saved, [file])
        expected = np.array(list(result["probabilities"].values()))
        for name, answer in answers.items():
            np.testing.assert_allclose(np.asarray(answer["probabilities"])[0], expected,
                                       atol=0.01, err_msg=f"{name} {height}x{width} grey={grey}")
