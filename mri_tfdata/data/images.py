"""Image files: bounded reads, checks (the pipeline's decoder, strict libjpeg), RGB conversion.

The dataset builder, the folder source and predict all read images through `read_image`, so a
file is accepted, converted or refused by the same rules everywhere, and a file that passes is
one the input pipeline (`decoding.decode_and_resize`) can decode.
"""

import dataclasses
import hashlib
import io
import os
import pathlib
import re
import stat

import numpy as np
import simplejpeg
import tensorflow as tf
from PIL import Image

from mri_tfdata.data import decoding, dicom

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


# How decoding's own strictness checks start their messages (a damaged JPEG libjpeg would accept).
_STRICT_REFUSAL = "damaged JPEG"


def _check_libjpeg_warnings(data: bytes) -> None:
    """Refuses a JPEG that libjpeg decodes only with a corrupt-data warning.

    libjpeg recovers from damaged entropy data (a cut file with its end marker put back, zeros or
    flipped bytes in the middle) by guessing: grey fill, or garbled blocks up to where it finds
    its place again; it only warns ("Corrupt JPEG data: ..."), and TensorFlow's decoder drops the
    warning. libjpeg-turbo's own strict mode (simplejpeg) turns it into an error; decoding at
    1/8 scale still reads every coefficient.

    Raises:
      CorruptImageError: libjpeg warned or failed; the message quotes it.
    """
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as e:
        raise CorruptImageError(f"{_STRICT_REFUSAL}: libjpeg can decode it only by guessing the "
                                f"damaged part ({e}); the file was cut short or overwritten") \
            from None


def check_decodes(data: bytes) -> None:
    """Decodes `data` once with the pipeline's decoder, as far as finding its errors needs, and
    a JPEG strictly (_check_libjpeg_warnings).

    Raises:
      CorruptImageError: TF cannot decode it (bad checksum, cut-short or garbled data), or
        libjpeg decodes it only with a corrupt-data warning.
    """
    try:
        decoding.check(tf.constant(data))
    except tf.errors.InvalidArgumentError as e:
        reason = _decoder_reason(e)
        raise CorruptImageError(reason if reason.startswith(_STRICT_REFUSAL)
                                else f"TensorFlow cannot decode it ({reason})") from None
    if data[:2] == b"\xff\xd8":  # JPEG
        _check_libjpeg_warnings(data)


def _decoder_reason(error: tf.errors.OpError) -> str:
    """The decoder's own words, without TF's "{{function_node ...}}" and "[Op:...]" wrapping,
    and for decoding's strictness checks just their message."""
    message = error.message
    strict = re.search(_STRICT_REFUSAL + r"[^'\"\]\n]*", message)
    if strict:
        return strict.group(0)
    reason = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\]", "", message.splitlines()[0])
    return " ".join(reason.split())


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


def read_image(path, *, dicom_window: dicom.Window | None = None) -> StoredImage:
    """Reads and checks one image file (see read_file and prepare_image).

    A DICOM file, or one frame of it named `path#N`, gives its frame as a lossless PNG
    (data.dicom: rescaled, windowed by `dicom_window` or the file's own window, 8-bit).

    Raises:
      CorruptImageError: the file is not a usable image; the message says why.
      OSError: the file cannot be read.
    """
    file, frame = dicom.split_key(path)
    if dicom.is_dicom_path(file):
        return read_dicom_frames(file, dicom_window=dicom_window, only=frame)[0]
    return prepare_image(read_file(pathlib.Path(path)))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# data.dicom.inspect's findings by file identity and version: predict reads a multi-frame file
# one frame at a time, and must not check (for compressed files: decode) the whole file each time.
_inspections: dict[tuple, dicom.Info] = {}


def _inspected(path) -> dicom.Info:
    info = os.stat(path)
    key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _inspections:
        _inspections[key] = dicom.inspect(path)
    return _inspections[key]


def read_dicom_frames(path, *, dicom_window: dicom.Window | None = None,
                      only: int | None = None) -> list[StoredImage]:
    """The frames of a DICOM file (or the one frame `only`, from 0) as lossless PNG StoredImages.

    Their sha256 is that of the 8-bit pixels, so two frames are duplicates when they show the
    same image; no header value is kept.

    Raises:
      CorruptImageError: not a usable DICOM file, or no frame `only`; the message says why.
      OSError: the file cannot be read.
    """
    try:
        frames = _inspected(path).frames
        if only is not None and not 0 <= only < frames:
            raise dicom.DicomError(f"has {frames} frame(s), no frame {only + 1}")
        stored = []
        for frame in range(frames) if only is None else (only,):
            try:
                pixels = dicom.read_frame(path, frame, window=dicom_window)
            except Exception as e:  # noqa: BLE001 -- decoder plugins raise many types.
                raise dicom.DicomError(f"damaged DICOM pixel data (frame {frame + 1}: "
                                       f"{type(e).__name__})") from None
            stored.append(StoredImage(_png(pixels), "png", reencoded=True,
                                      sha256=hashlib.sha256(pixels.tobytes()).hexdigest()))
        return stored
    except dicom.DicomError as e:
        raise CorruptImageError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """The verdict on one file: usable as it is, usable through replacement bytes, or refused."""

    error: str | None = None  # why the file is refused
    replacement: bytes | None = None  # RGB PNG bytes for a file TF cannot decode as intended
    dicom_info: dicom.Info | None = None  # what data.dicom found in a DICOM file; None for JPEG/PNG


# Verdicts already reached by this process, keyed by the file's identity and version, so that a run
# opening a split twice (training, then under a strategy) checks every file once.
_verdicts: dict[tuple, FileCheck] = {}


def _check_without_decoding(path) -> tuple[tuple, FileCheck | None]:
    """The header and conversion part of read_image; None means "decode it to be sure"."""
    if dicom.is_dicom_path(path):  # Before _open_regular: a multi-frame file may be larger.
        info = os.stat(path)
        key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        try:
            return key, _verdicts.get(key) or FileCheck(dicom_info=dicom.inspect(path))
        except dicom.DicomError as e:
            return key, FileCheck(error=str(e))
    with _open_regular(path) as f:
        info = os.fstat(f.fileno())
        key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key in _verdicts:
            return key, _verdicts[key]
        image_format, mode, _, _ = check_header(f)
        f.seek(0)
        head = f.read(26)
        if _decoded_as_is(image_format, mode, head):
            if image_format == "JPEG":
                f.seek(0)
                data = f.read(MAX_FILE_BYTES)
                try:
                    _check_libjpeg_warnings(data)
                except CorruptImageError:
                    try:  # Rare: TF's decoder first, for its own reason when it fails too.
                        check_decodes(data)
                    except CorruptImageError as e:
                        return key, FileCheck(error=str(e))
            return key, None
        f.seek(0)
        return key, FileCheck(replacement=_convert_to_png(f.read(MAX_FILE_BYTES)))


def _decodable(paths: list[str]) -> list[bool]:
    """Decodes every file with the pipeline's decoder, in parallel; True where it succeeded.

    JPEGs are decoded at 1/8 scale (decoding.check), which meets the same errors as a full decode
    at a fraction of its cost.
    """
    if not paths:
        return []
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths)).map(
        lambda i, path: (i, tf.size(decoding.check(tf.io.read_file(path)))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    decoded = {int(i) for i, _ in dataset.as_numpy_iterator()}
    return [i in decoded for i in range(len(paths))]


def check_files(paths, *, decode: bool = True) -> list[FileCheck]:
    """Checks many files as read_image checks one, decoding the kept ones in parallel.

    Args:
      paths: the image files.
      decode: decode the files TF decodes as they are; False checks them only up to their
        headers (size, format, dimensions), for a caller whose first pass decodes every file
        anyway and refuses those that fail (decode_failure names why). Files that need
        converting, and DICOM files, are checked in full either way.

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
    if not decode:
        # Not remembered: these files are known good only once the caller has decoded them.
        for i in pending:
            keys[i], verdicts[i] = None, FileCheck()
        pending = []
    for i, ok in zip(pending, _decodable([str(paths[i]) for i in pending])):
        if ok:
            verdicts[i] = FileCheck()
        else:  # Rare: decode it once more, alone, for the decoder's own reason.
            verdicts[i] = FileCheck(error=decode_failure(paths[i]))
    for key, verdict in zip(keys, verdicts):
        if key is not None:
            _verdicts[key] = verdict
    return verdicts


def decode_failure(path) -> str | None:
    """Why the pipeline's decoder refuses the file at `path` (decoded alone), or None if it does
    not; for files a parallel decoding pass could not decode, which that pass cannot tell."""
    try:
        check_decodes(read_file(path))
    except (CorruptImageError, OSError) as e:
        return str(e)
    return None
