"""Decodes JPEG/PNG bytes in TensorFlow by the one input contract: strict decode, bilinear resize.

The input contract (INPUT_CONTRACT, stored in every model.keras and written out in
docs/serving.md) is how pixels of any size become the model's input: decode the file in full to
8-bit RGB, resize the whole image with `tf.image.resize(..., method="bilinear")` (half-pixel
centres, no antialiasing, aspect ratio not kept) and round to uint8. Training, evaluation,
predict and both serving signatures all go through `resize`, so one image gets one answer.

Decoding is strict as far as a TensorFlow graph can see: a JPEG whose entropy data ends early
(libjpeg warns "corrupt data" and fills the missing blocks with mid grey) is refused with an error
in words, as is a JPEG whose header declares far more pixels than its bytes could hold. A JPEG
garbled but complete (libjpeg warns only of bytes left over before its end marker) decodes here;
image files are also checked by libjpeg's strict mode (data.images), which refuses it.
"""

import tensorflow as tf

# The accurate integer DCT, libjpeg's default (JDCT_ISLOW): what Pillow, OpenCV and
# tf.io.decode_jpeg's default give, so pixels decoded elsewhere match these to the grey level.
_DCT_METHOD = "INTEGER_ACCURATE"

INPUT_CONTRACT = {
    "version": 1,
    "decode": "JPEG or PNG decoded in full to 8-bit RGB (grey repeated on the 3 channels); JPEG "
              "with libjpeg's accurate integer DCT",
    "resize": "tf.image.resize(image, [S, S], method='bilinear', antialias=False): the whole "
              "image, half-pixel centres, aspect ratio not kept",
    "round": "tf.round (half to even), then uint8",
    "input": "uint8 RGB [N, S, S, 3], values 0-255 (the model scales them itself)",
}

# The strictness checks' messages start with these words and hold no quote or bracket, so that
# images.py can find them in TensorFlow's error text.
# libjpeg fills the blocks it finds no data for with all-zero coefficients: exactly this value.
_MISSING_BLOCK_VALUE = 128
# An 8x8 block of a JPEG costs at least one bit (its DC code) even in a progressive file.
_MIN_BITS_PER_BLOCK = 1


def _checked_jpeg_size(encoded: tf.Tensor) -> tf.Tensor:
    """`encoded`, once its length is known to be able to hold the pixels its header declares."""
    shape = tf.io.extract_jpeg_shape(encoded)
    blocks = tf.cast((shape[0] + 7) // 8, tf.int64) * tf.cast((shape[1] + 7) // 8, tf.int64)
    length = tf.cast(tf.strings.length(encoded), tf.int64)
    enough = length * 8 >= blocks * _MIN_BITS_PER_BLOCK
    check = tf.debugging.Assert(enough, [tf.strings.format(
        "damaged JPEG: its header declares {}x{} pixels, which no {}-byte file can hold (a "
        "bogus size, or a file cut short)", (shape[1], shape[0], length))])
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def _checked_complete(image: tf.Tensor, height, width, ratio: int) -> tf.Tensor:
    """`image`, once its last 8x8 block is known not to be libjpeg's fill for missing data.

    `height` x `width` is the full image's size and `image` that image decoded at 1/`ratio`.
    """
    side = 8 // ratio  # of a block, in decoded pixels
    last_row, last_col = (height - 1) // 8 * side, (width - 1) // 8 * side
    block = image[last_row:, last_col:]
    complete = tf.reduce_any(tf.not_equal(block, _MISSING_BLOCK_VALUE))
    check = tf.debugging.Assert(complete, [
        "damaged JPEG: its data ends before its last block, so libjpeg would fill the rest with "
        "grey (Corrupt JPEG data: premature end of data segment); the file was cut short or "
        "overwritten"])
    with tf.control_dependencies([check]):
        return tf.identity(image)


def _decode_jpeg(encoded: tf.Tensor, ratio: int) -> tf.Tensor:
    shape = tf.io.extract_jpeg_shape(encoded)
    image = tf.io.decode_jpeg(_checked_jpeg_size(encoded), channels=3, ratio=ratio,
                              dct_method=_DCT_METHOD)
    return _checked_complete(image, shape[0], shape[1], ratio)


# How tf.io.serialize_tensor starts a uint8 tensor (dtype field 1 = DT_UINT8, then the shape):
# the form in which data.dicom hands its already decoded frames to the pipeline. No JPEG
# (FF D8) or PNG (89 50) starts so.
_PIXELS_PREFIX = b"\x08\x04\x12"


def is_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """True for decoded 8-bit pixels serialized by data.dicom.encoded_frame."""
    return tf.equal(tf.strings.substr(encoded, 0, len(_PIXELS_PREFIX)), _PIXELS_PREFIX)


def _parse_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 1 or 3] pixels serialized by data.dicom."""
    pixels = tf.io.parse_tensor(encoded, tf.uint8)
    pixels = tf.reshape(pixels, tf.concat([tf.shape(pixels)[:2], [-1]], 0))
    pixels.set_shape([None, None, None])
    return pixels


def _to_rgb(pixels: tf.Tensor) -> tf.Tensor:
    """[H, W, 1 or 3] -> [H, W, 3], grey repeated on the 3 channels."""
    return tf.broadcast_to(pixels, tf.concat([tf.shape(pixels)[:2], [3]], 0))


def _pixels(encoded: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 1 or 3] pixels serialized by data.dicom, as RGB (grey repeated)."""
    return _to_rgb(_parse_pixels(encoded))


def _decode_at(encoded: tf.Tensor, jpeg_ratio: int) -> tf.Tensor:
    """Decodes JPEG (at 1/jpeg_ratio scale) or PNG bytes (in full) to uint8 RGB [h, w, 3]; the
    input pipeline's DICOM frames arrive already decoded (is_pixels) and are only expanded."""
    image = tf.case([
        (tf.io.is_jpeg(encoded), lambda: _decode_jpeg(encoded, jpeg_ratio)),
        (is_pixels(encoded), lambda: _pixels(encoded))],
        default=lambda: tf.io.decode_png(encoded, channels=3), exclusive=True)
    image.set_shape([None, None, 3])
    return image


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG or PNG bytes in full, strictly, to uint8 RGB [H, W, 3].

    Raises (when run):
      tf.errors.InvalidArgumentError: the bytes cannot be decoded, or are a damaged JPEG.
    """
    return _decode_at(encoded, 1)


def check(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG or PNG bytes just far enough to meet every error `decode` would meet.

    A JPEG is decoded at 1/8 scale: libjpeg still reads and entropy-decodes every coefficient of
    the file (where a cut-short, garbled or badly marked file fails), but skips most of the
    inverse DCT and colour conversion, which is most of a full decode's time. A last block of
    flat mid grey at that scale is decoded again in full, where `decode` refuses it only if all
    its 64 pixels are exactly libjpeg's fill. PNGs are decoded in full (zlib has no reduced mode).

    Returns:
      uint8 tensor [h, w, 3], a thumbnail for JPEGs; callers only need it to exist.
    """
    def jpeg():
        thumbnail = tf.io.decode_jpeg(_checked_jpeg_size(encoded), channels=3, ratio=8,
                                      dct_method=_DCT_METHOD)
        suspect = tf.reduce_all(tf.equal(thumbnail[-1, -1], _MISSING_BLOCK_VALUE))
        return tf.cond(suspect, lambda: _decode_jpeg(encoded, 1)[::8, ::8],
                       lambda: tf.identity(thumbnail))

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, lambda: tf.io.decode_png(encoded, channels=3))
    image.set_shape([None, None, 3])
    return image


def resize(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes uint8 images [H, W, 3] or [N, H, W, 3] to uint8 squares of `image_size`.

    The resize of INPUT_CONTRACT (bilinear, no antialiasing, rounded): the one resize of the
    input pipeline, predict and the serving export, so that pixels of any size reach the model
    exactly as a training image does.
    """
    resized = tf.image.resize(images, [image_size, image_size], method="bilinear")
    # Round instead of truncating, so the resize does not darken the image by half a grey level.
    return tf.cast(tf.round(resized), tf.uint8)


def decode_and_resize(encoded: tf.Tensor, *, image_size: int) -> tf.Tensor:
    """Decodes a JPEG or PNG strictly and in full, then resizes it by INPUT_CONTRACT.

    Args:
      encoded: tf.string scalar with JPEG or PNG bytes, or a DICOM frame's 8-bit pixels as the
        input pipeline carries them (is_pixels).
      image_size: side of the output in pixels.

    Returns:
      uint8 tensor [image_size, image_size, 3].
    """
    # Serialized pixels are resized before grey is repeated to RGB: the same values (the resize
    # treats each channel alone) for a third of the work.
    image = tf.cond(is_pixels(encoded),
                    lambda: _to_rgb(resize(_parse_pixels(encoded), image_size)),
                    lambda: resize(decode(encoded), image_size))
    image.set_shape([image_size, image_size, 3])
    return image
