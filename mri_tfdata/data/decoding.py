"""Decodes JPEG/PNG bytes in TensorFlow: the pipeline's decoder, its resize and the file check.

`decode_and_resize` is the one decoder of the input pipeline, of predict and of the serving
export; it decodes large JPEGs at a reduced DCT scale. `check` finds every error a decode would
meet at the least cost, and `decode` is the full decode the reduced ones are measured against.
"""

import tensorflow as tf

# The faster integer DCT: its error (a grey level or two) is far below what resizing changes.
_DCT_METHOD = "INTEGER_FAST"


def _decode_at(encoded: tf.Tensor, jpeg_ratio: int) -> tf.Tensor:
    """Decodes JPEG (at 1/jpeg_ratio scale) or PNG bytes (in full) to uint8 RGB [h, w, 3]."""
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, ratio=jpeg_ratio, dct_method=_DCT_METHOD),
        lambda: tf.io.decode_png(encoded, channels=3))
    image.set_shape([None, None, 3])
    return image


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG or PNG bytes in full to uint8 RGB [H, W, 3]."""
    return _decode_at(encoded, 1)


def check(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG or PNG bytes just far enough to meet every error `decode` would meet.

    A JPEG is decoded at 1/8 scale: libjpeg still reads and entropy-decodes every coefficient of
    the file (where a cut-short, garbled or badly marked file fails), but skips most of the
    inverse DCT and colour conversion, which is most of a full decode's time. PNGs are decoded
    in full (zlib has no reduced mode).

    Returns:
      uint8 tensor [h, w, 3], a thumbnail for JPEGs; callers only need it to exist.
    """
    return _decode_at(encoded, 8)


# The scales libjpeg decodes at directly (decode_jpeg's `ratio`): the DCT is cut short, so a
# 512 px slice wanted at 256 px is decoded at a quarter of the work and needs no resize at all.
DCT_RATIOS = (1, 2, 4, 8)


def resize(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes uint8 images [H, W, 3] or [N, H, W, 3] (bilinear) to uint8 squares of `image_size`.

    The one resize of the input pipeline and of the serving export, so that a served image of any
    size reaches the model exactly as a training image does.
    """
    resized = tf.image.resize(images, [image_size, image_size], method="bilinear")
    # Round instead of truncating, so the resize does not darken the image by half a grey level.
    return tf.cast(tf.round(resized), tf.uint8)


def _scaled_side(side, ratio):
    return (side + ratio - 1) // ratio  # libjpeg's output side at 1/ratio scale: rounded up


def _dct_index(height, width, image_size: int) -> tf.Tensor:
    """Index into DCT_RATIOS of the scale to decode a height x width JPEG at (see dct_ratio)."""
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    index = tf.constant(0, tf.int32)
    for ratio in DCT_RATIOS[1:]:  # "Fits" only turns false as the ratio grows, so count them.
        fits = tf.logical_and(_scaled_side(height, ratio) >= image_size,
                              _scaled_side(width, ratio) >= image_size)
        index += tf.cast(fits, tf.int32)
    return index


def dct_ratio(height, width, *, image_size: int) -> tf.Tensor:
    """The DCT scale decode_and_resize decodes a height x width JPEG at, for image_size.

    The largest of DCT_RATIOS whose scaled output is still at least image_size on both sides, so
    the reduced decode never makes the resize upsample (1 for images smaller than 2x the target).

    Returns:
      int32 scalar tensor: 1, 2, 4 or 8.
    """
    return tf.gather(tf.constant(DCT_RATIOS, tf.int32), _dct_index(height, width, image_size))


def decode_and_resize(encoded: tf.Tensor, *, image_size: int) -> tf.Tensor:
    """Decodes a JPEG or PNG to RGB and resizes it to a square uint8 image.

    A JPEG at least 2, 4 or 8 times the target on both sides is decoded at 1/2, 1/4 or 1/8 scale
    (see dct_ratio), then resized; the resize is skipped when the scaled decode already has the
    target size (a 512 px slice at 256 px). PNGs and smaller JPEGs are decoded in full. The
    reduced decode differs from full decode + resize by about a grey level on average
    (benchmarks/README.md, "Input pipeline").

    Args:
      encoded: tf.string scalar with JPEG or PNG bytes.
      image_size: side of the output in pixels.

    Returns:
      uint8 tensor [image_size, image_size, 3].
    """
    is_jpeg = tf.io.is_jpeg(encoded)
    # The header parse fails on PNG bytes, hence this one cond; the pixels are decoded once below.
    shape = tf.cond(is_jpeg, lambda: tf.io.extract_jpeg_shape(encoded),
                    lambda: tf.zeros([3], tf.int32))
    index = _dct_index(shape[0], shape[1], image_size)
    ratio = tf.gather(tf.constant(DCT_RATIOS, tf.int32), index)
    exact = tf.logical_and(tf.equal(_scaled_side(shape[0], ratio), image_size),
                           tf.equal(_scaled_side(shape[1], ratio), image_size))
    # Branch 2k (+1 when no resize is needed) decodes at DCT_RATIOS[k]; the last one is PNG.
    branch = tf.where(is_jpeg, 2 * index + tf.cast(exact, tf.int32), 2 * len(DCT_RATIOS))

    def jpeg(ratio, needs_resize):
        def decode_scaled():
            image = tf.io.decode_jpeg(encoded, channels=3, ratio=ratio, dct_method=_DCT_METHOD)
            return resize(image, image_size) if needs_resize else image
        return decode_scaled

    branches = [jpeg(r, needs_resize) for r in DCT_RATIOS for needs_resize in (True, False)]
    branches.append(lambda: resize(tf.io.decode_png(encoded, channels=3), image_size))
    image = tf.switch_case(branch, branches)
    # Not tf.ensure_shape inside the branches: in a graph it would also check the branches not
    # taken. The no-resize branches have the target size by construction.
    image.set_shape([image_size, image_size, 3])
    return image
