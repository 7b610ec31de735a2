"""The SavedModel export for TF Serving and Vertex AI (the `mri-export` command writes it).

Writes a SavedModel (default: export/ beside the model) with two signatures:
  serve_bytes (also serving_default): image_bytes, string [N]: JPEG or PNG files, any size
  serve: images, uint8 [N, H, W, 3], any H and W (one size per request)
Both decode and resize inside the graph with the input pipeline's own functions, so an image
reaches the model exactly as in training, and both return probabilities (float32 [N, C]),
class_index (int64 [N]) and class_name (string [N]); assets/class_names.txt lists the classes.
A model calibrated by training also returns prediction_set (bool [N, C]: class c is in the
image's conformal prediction set) at its primary level, the first of --conformal_alphas (90% by
default), the sets mri-predict gives.
"""

import errno
import pathlib
import tempfile

import keras
import tensorflow as tf

from mri_tfdata.core import atomic
from mri_tfdata.data import decoding, images
from mri_tfdata.evaluation import conformal
from mri_tfdata.serving import model_file

EXPORT_DIR = "export"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _first_bytes_in_hex(encoded: tf.Tensor, count: int = 8) -> tf.Tensor:
    """The first `count` bytes of `encoded` as hex pairs ("ff d8 ff ..."), for messages."""
    head = tf.io.decode_raw(tf.strings.substr(encoded, 0, count), tf.uint8)
    hex_pairs = tf.constant([f"{i:02x}" for i in range(256)])
    return tf.strings.reduce_join(tf.gather(hex_pairs, tf.cast(head, tf.int32)), separator=" ")


def _is_png(encoded: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(encoded, 0, len(_PNG_SIGNATURE)), _PNG_SIGNATURE)


def _checked_image(encoded: tf.Tensor) -> tf.Tensor:
    """`encoded`, once known to be a JPEG or PNG whose header declares at most
    images.MAX_PIXELS pixels.

    Anything else is refused in words before it reaches a decoder (whose own errors name byte
    offsets and pixel counts). A server must not allocate gigabytes for a few bytes of
    decompression bomb; the dimensions are read from the JPEG header (extract_jpeg_shape) or the
    PNG's IHDR chunk.
    """
    is_jpeg, is_png = tf.io.is_jpeg(encoded), _is_png(encoded)
    length = tf.strings.length(encoded)
    start = tf.where(length > 0, tf.strings.join([" starting with ", _first_bytes_in_hex(encoded)]),
                     "")
    known = tf.debugging.Assert(tf.logical_or(is_jpeg, is_png), [tf.strings.join([
        "image_bytes: not a JPEG or PNG image (got ", tf.strings.as_string(length), " bytes",
        start, "); send each image file as it is"])])

    def png_height_width():
        width_height = tf.io.decode_raw(tf.strings.substr(encoded, 16, 8), tf.uint8)
        width_height = tf.reshape(tf.cast(width_height, tf.int64), [2, 4])  # big-endian bytes
        width_height = tf.reduce_sum(width_height * [2 ** 24, 2 ** 16, 2 ** 8, 1], axis=1)
        return tf.reverse(width_height, [0])

    with tf.control_dependencies([known]):
        height_width = tf.cond(
            is_jpeg, lambda: tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64),
            lambda: tf.cond(tf.strings.length(encoded) >= 24, png_height_width,
                            lambda: tf.zeros([2], tf.int64)))  # too short: decode_png says so
    check = tf.debugging.Assert(
        height_width[0] * height_width[1] <= images.MAX_PIXELS, [tf.strings.join([
            f"image_bytes: an image declares more than {images.MAX_PIXELS} pixels (",
            tf.strings.as_string(height_width[1]), "x", tf.strings.as_string(height_width[0]),
            "), far more than an MRI slice (a decompression bomb?)"])])
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def prediction_set(probabilities: tf.Tensor, calibration: dict) -> tf.Tensor:
    """bool [N, C] of the primary level's sets, by conformal.class_scores's rule in float32."""
    threshold = calibration["alphas"][conformal.primary_alpha(calibration)]
    if calibration["score"] == "lac":
        scores = 1.0 - probabilities
    else:  # aps: the mass of the classes at least as probable as each class.
        at_least = tf.cast(probabilities[:, None, :] >= probabilities[:, :, None], tf.float32)
        scores = tf.reduce_sum(probabilities[:, None, :] * at_least, axis=-1)
    return scores <= tf.constant(threshold, tf.float32)


def export_serving(classifier: keras.Model, export_dir, *, class_names,
                   calibration: dict | None = None) -> None:
    """Writes the serving SavedModel of `classifier` into `export_dir` (which must not exist).

    The model's weights are stored once: the archive does not track() the model, whose Keras
    variable wrappers would be saved beside the tf.Variables the endpoints capture, the same
    weights twice (keras-team/keras#23553).

    Args:
      classifier: uint8 images [S, S, 3] -> float32 probabilities [C].
      export_dir: the SavedModel folder to create.
      class_names: the C class names, in label order.
      calibration: the model's conformal thresholds (SavedClassifier.conformal): the endpoints
        also return prediction_set; None for none.
    """
    image_size, num_classes = int(classifier.input_shape[1]), len(class_names)
    with tempfile.TemporaryDirectory() as tmp:
        # The lookup table reads this file, which the SavedModel then keeps as an asset.
        names_file = pathlib.Path(tmp) / "class_names.txt"
        names_file.write_text("".join(f"{name}\n" for name in class_names))
        table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            str(names_file), key_dtype=tf.int64, key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string, value_index=tf.lookup.TextFileIndex.WHOLE_LINE),
            default_value="")

        # One function shared by both endpoints, so ResNet50's graph is stored once.
        @tf.function(input_signature=[
            tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)], autograph=False)
        def outputs(batch):
            # training=False: Keras's random layers (augmentation, dropout) default to training
            # mode when a model is called without it. The cond answers an empty request, on
            # which ResNet50's BatchNorm would fail.
            probabilities = tf.cond(
                tf.shape(batch)[0] > 0,
                lambda: tf.cast(classifier(batch, training=False), tf.float32),
                lambda: tf.zeros([0, num_classes], tf.float32))
            class_index = tf.argmax(probabilities, axis=-1)
            found = {"probabilities": probabilities, "class_index": class_index,
                     "class_name": table.lookup(class_index)}
            if calibration:
                found["prediction_set"] = prediction_set(probabilities, calibration)
            return found

        def serve_bytes(image_bytes):
            def decode(encoded):
                return decoding.decode_and_resize(_checked_image(encoded), image_size=image_size)

            batch = tf.map_fn(decode, image_bytes,
                fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))
            return outputs(batch)

        def serve(images_uint8):
            return outputs(decoding.resize(images_uint8, image_size))

        archive = keras.export.ExportArchive()
        archive.track(table)  # only the table (and its asset); the model: see the docstring
        # The first endpoint is also serving_default: bytes, what REST clients send.
        archive.add_endpoint("serve_bytes", serve_bytes, input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes")])
        archive.add_endpoint("serve", serve, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        archive.write_out(str(export_dir), verbose=False)


# TensorFlow's errors for a SavedModel that cannot be written (full disk: ResourceExhausted from
# SaveV2; read-only or forbidden folder: PermissionDenied, FailedPrecondition), as an errno.
_WRITE_ERRORS = {tf.errors.ResourceExhaustedError: errno.ENOSPC,
                 tf.errors.PermissionDeniedError: errno.EACCES,
                 tf.errors.FailedPreconditionError: errno.EIO}


def export_model(model_path, out_dir) -> pathlib.Path:
    """Loads a model.keras and writes its serving SavedModel to `out_dir`, whole or not at all.

    Raises:
      atomic.DiskError: the SavedModel cannot be written (full disk, read-only folder), naming
        `out_dir`; nothing is left behind.
    """
    saved = model_file.load_classifier(model_path)

    def write(tmp):
        try:
            export_serving(saved.model, tmp, class_names=saved.class_names,
                           calibration=saved.conformal)
        except tuple(_WRITE_ERRORS) as e:
            # TensorFlow's message names its op (SaveV2) and shapes; its first line the cause.
            reason = (e.message or type(e).__name__).strip().splitlines()[0]
            raise OSError(_WRITE_ERRORS[type(e)], reason) from None

    return atomic.publish(out_dir, write)
