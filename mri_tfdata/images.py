"""Image files: bounded reads, checks with the pipeline's own decoder, RGB conversion, decoding.

The dataset builder, the folder source and predict all read images through `read_image`, so a
file is accepted, converted or refused by the same rules everywhere, and a file that passes is
one the input pipeline (`decode_and_resize`) can decode.
"""

import dataclasses
import hashlib
import io
import os
import pathlib
import stat

import numpy as np
import tensorflow as tf
from PIL import Image

# 8192 x 8192: far above any MRI slice (the Kaggle ones are mostly 512 x 512); decoding more than
# this as uint8 RGB would take > 200 MB for a single image, the signature of a decompression bomb.
MAX_PIXELS = 8192 * 8192
# An encoded slice is tens of kilobytes; a file far larger is not one, and is never read whole.
MAX_FILE_BYTES = 64 * 1024 * 1024


class CorruptImageError(ValueError):
    """A file that is not a usable image: empty, not an image, undecodable, or absurdly large."""


@dataclasses.dataclass(frozen=True)
class StoredImage:
    """An image ready to store or decode: JPEG or PNG bytes that TF decodes to 8-bit RGB.

    Attributes:
      data: the encoded bytes.
      format: "jpeg" or "png".
      reencoded: False when `data` is the original file, True when it was converted to PNG.
      sha256: hex digest of the original file's bytes (its identity for de-duplication).
    """

    data: bytes
    format: str
    reencoded: bool
    sha256: str


def _open_regular(path):
    """Opens a file for reading after checking that it is a regular file of a sane size."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    file = open(fd, "rb", buffering=0)
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "not a regular file (a device, FIFO or socket)"
    elif info.st_size > MAX_FILE_BYTES:
        problem = f"{info.st_size} bytes, more than the {MAX_FILE_BYTES} accepted for one image"
    elif info.st_size == 0:
        problem = "empty file (0 bytes)"
    if problem:
        file.close()
        raise CorruptImageError(problem)
    return file


def read_file(path) -> bytes:
    """Reads a regular file of at most MAX_FILE_BYTES; FIFOs, devices and huge files are refused.

    Raises:
      CorruptImageError: not a regular file, empty, or too large.
      OSError: the file cannot be opened.
    """
    with _open_regular(path) as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if not data or len(data) > MAX_FILE_BYTES:  # The file changed while being read.
        raise CorruptImageError(f"{len(data)} bytes; an image has 1 to {MAX_FILE_BYTES}")
    return data


def check_header(data, max_pixels: int = MAX_PIXELS) -> tuple[str, str, int, int]:
    """Parses only the header and refuses absurd dimensions before anything is decoded.

    Args:
      data: the encoded bytes, or a binary file object positioned at the start.
      max_pixels: the largest accepted width * height.

    Returns:
      (format, mode, width, height) as PIL reports them, e.g. ("JPEG", "L", 512, 512).

    Raises:
      CorruptImageError: not a recognisable image, or more than `max_pixels` pixels.
    """
    try:
        # Lazy: parses the header, decodes no pixel.
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            image_format, mode, (width, height) = img.format, img.mode, img.size
    except Image.UnidentifiedImageError:
        # Pillow's own message names a BytesIO object, not the file: say it in words.
        raise CorruptImageError("not an image file (unknown format or damaged header)") \
            from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"not a readable image ({e})") from None
    if width * height > max_pixels:
        raise CorruptImageError(f"declares {width}x{height} pixels, more than the {max_pixels} "
                                "accepted (a decompression bomb, or not an MRI slice)")
    return image_format, mode, width, height


def _decoded_as_is(image_format: str, mode: str, data: bytes) -> bool:
    """True when TF's decoder turns these bytes into the intended 8-bit RGB image by itself."""
    if image_format == "JPEG":
        return mode in ("RGB", "L")  # Not CMYK/YCCK, which TF would decode with wrong colours.
    if image_format == "PNG":
        # IHDR sits at a fixed offset: bit depth at byte 24, colour type at 25 (0 grey, 2 RGB).
        # Pillow shows 16-bit RGB as "RGB", so the header is the only reliable test.
        return len(data) > 25 and data[24] == 8 and data[25] in (0, 2)
    return False


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I"):
        # 16-bit (or 32-bit) grey: map the nominal 16-bit range to 8 bits as tf.io.decode_png does.
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.round(grey).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 255)
        return Image.fromarray(np.round(grey).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            img.mode == "P" and "transparency" in img.info):
        # Transparent parts become black, the background of an MRI slice.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _convert_to_png(data: bytes) -> bytes:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # A full decode: a truncated or garbled file raises here.
            rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode the image ({e})") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG or PNG bytes in full to uint8 RGB [H, W, 3]: the check every file passes.

    A file this decodes is one decode_and_resize, the pipeline's decoder, decodes too.
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        # INTEGER_FAST: ~15% faster than the default DCT on these small JPEGs; its error (at most
        # a grey level or two) is far below what bilinear resizing changes anyway.
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_FAST"),
        lambda: tf.io.decode_png(encoded, channels=3))
    image.set_shape([None, None, 3])
    return image


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
    reduced decode differs from full decode + resize by about a grey level on average (README,
    "Input pipeline").

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
            # INTEGER_FAST: ~15% faster than the default DCT; its error (a grey level or two) is
            # far below what bilinear resizing changes anyway.
            image = tf.io.decode_jpeg(encoded, channels=3, ratio=ratio, dct_method="INTEGER_FAST")
            return resize(image, image_size) if needs_resize else image
        return decode_scaled

    branches = [jpeg(r, needs_resize) for r in DCT_RATIOS for needs_resize in (True, False)]
    branches.append(lambda: resize(tf.io.decode_png(encoded, channels=3), image_size))
    image = tf.switch_case(branch, branches)
    # Not tf.ensure_shape inside the branches: in a graph it would also check the branches not
    # taken. The no-resize branches have the target size by construction.
    image.set_shape([image_size, image_size, 3])
    return image


def check_decodes(data: bytes) -> None:
    """Decodes `data` once with the pipeline's decoder.

    Raises:
      CorruptImageError: TF cannot decode it (bad checksum, cut-short or garbled data).
    """
    try:
        decode(tf.constant(data))
    except tf.errors.InvalidArgumentError as e:
        raise CorruptImageError(f"TensorFlow cannot decode it ({e.message.splitlines()[0]})") \
            from None


def prepare_image(data: bytes, *, verify: bool = True) -> StoredImage:
    """Turns a file's bytes into a StoredImage, converting what TF cannot decode as intended.

    8-bit RGB or grey JPEGs and PNGs keep their bytes (TF expands grey to RGB); CMYK, 16-bit,
    palette, alpha and other formats are decoded by Pillow and re-encoded as RGB PNG.

    Args:
      data: the encoded file.
      verify: decode kept bytes once with the pipeline's decoder; callers that check many files
        at once (sources.load_folder_source) pass False and decode them in parallel instead.

    Raises:
      CorruptImageError: not an image, absurd dimensions, or not decodable.
    """
    digest = hashlib.sha256(data).hexdigest()
    image_format, mode, _, _ = check_header(data)
    if _decoded_as_is(image_format, mode, data):
        if verify:
            check_decodes(data)
        return StoredImage(data, image_format.lower(), reencoded=False, sha256=digest)
    return StoredImage(_convert_to_png(data), "png", reencoded=True, sha256=digest)


def read_image(path) -> StoredImage:
    """Reads and checks one image file (see read_file and prepare_image).

    Raises:
      CorruptImageError: the file is not a usable image; the message says why.
      OSError: the file cannot be read.
    """
    return prepare_image(read_file(pathlib.Path(path)))


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """The verdict on one file: usable as it is, usable through replacement bytes, or refused."""

    error: str | None = None  # why the file is refused
    replacement: bytes | None = None  # RGB PNG bytes for a file TF cannot decode as intended


# Verdicts already reached by this process, keyed by the file's identity and version, so that a run
# opening a split twice (training, then under a strategy) checks every file once.
_verdicts: dict[tuple, FileCheck] = {}


def _check_without_decoding(path) -> tuple[tuple, FileCheck | None]:
    """The header and conversion part of read_image; None means "decode it to be sure"."""
    with _open_regular(path) as f:
        info = os.fstat(f.fileno())
        key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key in _verdicts:
            return key, _verdicts[key]
        image_format, mode, _, _ = check_header(f)
        f.seek(0)
        head = f.read(26)
        if _decoded_as_is(image_format, mode, head):
            return key, None
        f.seek(0)
        return key, FileCheck(replacement=_convert_to_png(f.read(MAX_FILE_BYTES)))


def _decodable(paths: list[str]) -> list[bool]:
    """Decodes every file with the pipeline's decoder, in parallel; True where it succeeded."""
    if not paths:
        return []
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths)).map(
        lambda i, path: (i, tf.size(decode(tf.io.read_file(path)))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    decoded = {int(i) for i, _ in dataset.as_numpy_iterator()}
    return [i in decoded for i in range(len(paths))]


def check_files(paths) -> list[FileCheck]:
    """Checks many files as read_image checks one, decoding the kept ones in parallel.

    Args:
      paths: the image files.

    Returns:
      One FileCheck per path, in order.
    """
    verdicts: list[FileCheck | None] = [None] * len(paths)
    keys: list[tuple | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            keys[i], verdicts[i] = _check_without_decoding(path)
        except (CorruptImageError, OSError) as e:
            verdicts[i] = FileCheck(error=str(e) if isinstance(e, CorruptImageError)
                                    else f"cannot read it ({e.strerror or e})")
    pending = [i for i, v in enumerate(verdicts) if v is None]
    for i, ok in zip(pending, _decodable([str(paths[i]) for i in pending])):
        if ok:
            verdicts[i] = FileCheck()
        else:  # Rare: decode it once more, alone, for the decoder's own reason.
            try:
                check_decodes(read_file(paths[i]))
                verdicts[i] = FileCheck()
            except (CorruptImageError, OSError) as e:
                verdicts[i] = FileCheck(error=str(e))
    for key, verdict in zip(keys, verdicts):
        if key is not None:
            _verdicts[key] = verdict
    return verdicts
