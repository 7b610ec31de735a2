"""Tests of mri_tfdata.data.images: what is kept, converted or refused, by one reader and decoder."""

import io
import os
import struct
import threading
import zlib

import image_trees
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mri_tfdata.data import decoding, images
from mri_tfdata.data.images import CorruptImageError


# Real slice sizes (Kaggle's are mostly 512 x 512, with odd ones), RGB and grey.
REAL_SIZES = [(512, 512, False), (512, 512, True), (284, 324, False), (284, 324, True),
              (630, 550, False), (150, 198, True)]


def decode(stored: images.StoredImage) -> np.ndarray:
    """What the input pipeline gets from the stored bytes."""
    return decoding.decode(tf.constant(stored.data)).numpy()


# --- kept or converted -------------------------------------------------------------------------


def test_rgb_and_grey_jpeg_and_png_keep_their_original_bytes(tmp_path):
    rgb = image_trees.pixels(1)
    cases = [
        (image_trees.write(tmp_path / "a.jpg", image_trees.jpeg_bytes(1)), "jpeg"),
        (image_trees.write(tmp_path / "g.jpg", image_trees.jpeg_bytes(2, "L")), "jpeg"),
        (image_trees.write(tmp_path / "a.png", image_trees.png_bytes(Image.fromarray(rgb))),
         "png"),
        (image_trees.write(tmp_path / "g.png",
                            image_trees.png_bytes(Image.fromarray(rgb[:, :, 0]))), "png"),
    ]
    for path, fmt in cases:
        stored = images.read_image(path)
        assert (stored.data, stored.format, stored.reencoded) == (path.read_bytes(), fmt, False)
        decoded = decode(stored)
        assert decoded.shape == (image_trees.SIZE, image_trees.SIZE, 3)
    # Grey stays grey: TF repeats the one channel.
    grey = decode(images.read_image(tmp_path / "g.png"))
    np.testing.assert_array_equal(grey, np.repeat(rgb[:, :, :1], 3, axis=2))


def test_a_png_named_jpg_is_recognised_by_content(tmp_path):
    path = image_trees.write(
        tmp_path / "a.jpg", image_trees.png_bytes(Image.fromarray(image_trees.pixels(1))))
    assert images.read_image(path).format == "png"


def test_rgba_png_becomes_rgb_with_transparent_parts_black(tmp_path):
    path = image_trees.write(tmp_path / "a.png", image_trees.rgba_png(3))
    stored = images.read_image(path)
    assert stored.reencoded
    image = decode(stored)
    half = image_trees.SIZE // 2
    assert not image[:, :half].any()
    np.testing.assert_array_equal(image[:, half:], image_trees.pixels(3)[:, half:])


def test_palette_png_becomes_rgb(tmp_path):
    palette = Image.fromarray(image_trees.pixels(5)).convert("P")
    path = image_trees.write(tmp_path / "p.png", image_trees.png_bytes(palette))
    np.testing.assert_array_equal(decode(images.read_image(path)),
                                  np.asarray(palette.convert("RGB")))


def test_cmyk_jpeg_becomes_rgb_with_similar_colours(tmp_path):
    path = image_trees.write(tmp_path / "c.jpg", image_trees.jpeg_bytes(4, "CMYK"))
    stored = images.read_image(path)
    assert stored.reencoded and Image.open(io.BytesIO(stored.data)).mode == "RGB"
    # JPEG is lossy and the pixels are random noise, so compare the mean colour only.
    np.testing.assert_allclose(decode(stored).mean(axis=(0, 1)),
                               image_trees.pixels(4).mean(axis=(0, 1)), atol=12)


def test_16bit_grey_and_rgb_pngs_are_scaled_to_8_bits(tmp_path):
    for value, expected in [(65535, 255), (257 * 100, 100), (0, 0)]:
        path = image_trees.write(tmp_path / f"{value}.png", image_trees.gray16_png(value))
        assert (decode(images.read_image(path)) == expected).all()
    path = image_trees.write(tmp_path / "rgb48.png", image_trees.rgb48_png(257 * 200))
    stored = images.read_image(path)
    assert stored.reencoded and stored.data[24] == 8  # The PNG header's bit depth.
    assert (decode(stored) == 200).all()


def test_the_hash_is_the_original_files(tmp_path):
    import hashlib

    path = image_trees.write(tmp_path / "c.jpg", image_trees.jpeg_bytes(4, "CMYK"))
    assert images.read_image(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# --- refused -----------------------------------------------------------------------------------


def _png_cut_inside_its_data() -> bytes:
    """Header and chunk structure intact, the compressed rows cut short (and the CRC redone)."""
    rows = b"".join(b"\x00" + bytes(image_trees.pixels(7)[r].tobytes())
                    for r in range(image_trees.SIZE))
    compressed = zlib.compress(rows)[:40]
    header = struct.pack(">IIBBBBB", image_trees.SIZE, image_trees.SIZE, 8, 2, 0, 0, 0)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed)
            + chunk(b"IEND", b""))


def _jpeg_with_garbled_middle() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_trees.pixels(8, size=64)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"\xff\xda")  # Start of scan: what follows is the entropy-coded data.
    middle = (start + len(data)) // 2
    data[middle:middle + 16] = b"\xff\xc4" * 8  # Huffman-table markers where none belong.
    return bytes(data)


UNDECODABLE = {
    "png_bad_checksum": lambda: image_trees.bad_crc_png(6),
    "png_cut_short": _png_cut_inside_its_data,
    "jpeg_garbled_middle": _jpeg_with_garbled_middle,
    "jpeg_truncated": lambda: image_trees.truncated_jpeg(7),
}


@pytest.mark.parametrize("name", sorted(UNDECODABLE))
def test_files_tf_cannot_decode_are_refused_alone_and_in_bulk(tmp_path, name):
    data = UNDECODABLE[name]()
    images.check_header(data)  # The quick check passes: only a decode tells.
    bad = image_trees.write(tmp_path / f"{name}.img", data)
    with pytest.raises(CorruptImageError, match="cannot decode") as refused:
        images.read_image(bad)
    good = image_trees.write(tmp_path / "good.jpg", image_trees.jpeg_bytes(1))
    verdicts = images.check_files([good, bad, good])
    assert [v.error is None for v in verdicts] == [True, False, True]
    assert "cannot decode" in verdicts[1].error
    # The decoder's words, without TF's internal function names around them.
    for message in (str(refused.value), verdicts[1].error):
        assert "function_node" not in message and "[Op:" not in message, message


@pytest.mark.parametrize("name", sorted(image_trees.damaged_jpegs()))
def test_jpegs_libjpeg_decodes_only_with_a_corrupt_data_warning_are_refused(tmp_path, name):
    data = image_trees.damaged_jpegs()[name]
    images.check_header(data)  # The header is fine: only the data is damaged.
    bad = image_trees.write(tmp_path / f"{name}.jpg", data)
    with pytest.raises(CorruptImageError, match="damaged JPEG") as refused:
        images.read_image(bad)
    assert "assertion failed" not in str(refused.value), refused.value
    good = image_trees.write(tmp_path / "good.jpg", image_trees.slice_like_jpeg(512, 512,
                                                                               grey=True))
    verdicts = images.check_files([good, bad, good])
    assert [v.error is None for v in verdicts] == [True, False, True]
    assert "damaged JPEG" in verdicts[1].error
    for decoder in (decoding.decode, decoding.check,
                    lambda b: decoding.decode_and_resize(b, image_size=64)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="damaged JPEG"):
            decoder(tf.constant(data))
    images._verdicts.clear()


@pytest.mark.parametrize("name", sorted(image_trees.garbled_jpegs()))
def test_jpegs_garbled_but_complete_are_refused_with_libjpegs_warning(tmp_path, name):
    # Every block decodes (wrongly after the damage), so nothing in the pixels tells; only
    # libjpeg's "extraneous bytes before marker" warning does.
    data = image_trees.garbled_jpegs()[name]
    bad = image_trees.write(tmp_path / f"{name}.jpg", data)
    with pytest.raises(CorruptImageError, match="damaged JPEG.*extraneous bytes before marker"):
        images.read_image(bad)  # predict and the TFDS build
    good = image_trees.write(tmp_path / "good.jpg", image_trees.slice_like_jpeg(512, 512,
                                                                               grey=False))
    verdicts = images.check_files([good, bad, good])  # the folder source
    assert [v.error is None for v in verdicts] == [True, False, True]
    assert verdicts[1].error.startswith("damaged JPEG") and "extraneous" in verdicts[1].error
    images._verdicts.clear()


@pytest.mark.parametrize("height, width, grey", REAL_SIZES)
def test_valid_jpegs_of_real_sizes_and_a_grey_corner_are_not_refused(tmp_path, height, width,
                                                                      grey):
    data = image_trees.slice_like_jpeg(height, width, grey=grey)
    path = image_trees.write(tmp_path / "ok.jpg", data)
    assert not images.read_image(path).reencoded and images.check_files([path])[0].error is None
    # A mid-grey last block with detail in it is an image, not libjpeg's flat fill.
    grey_corner = np.full((height, width, 3), 128, np.uint8)
    grey_corner[: height // 2] = 20
    grey_corner[-3, -3] = 140
    encoded = tf.io.encode_jpeg(grey_corner, quality=100)
    decoding.decode(encoded)
    decoding.check(encoded)


def test_a_jpeg_with_trailing_bytes_is_accepted(tmp_path):
    path = image_trees.write(tmp_path / "t.jpg", image_trees.jpeg_bytes(1) + b"\0" * 5000)
    assert not images.read_image(path).reencoded
    assert images.check_files([path])[0].error is None


@pytest.mark.parametrize("content", [b"", b"this is a text file named .jpg\n"],
                         ids=["zero_bytes", "text"])
def test_unreadable_files_raise_corrupt_image_error(tmp_path, content):
    path = image_trees.write(tmp_path / "bad.jpg", content)
    with pytest.raises(CorruptImageError):
        images.read_image(path)
    assert images.check_files([path])[0].error


def test_non_regular_files_are_refused_without_reading_or_blocking(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpg"
    os.symlink("/dev/zero", zero)
    result = {}
    # A FIFO with no writer would block an ordinary open forever: run it where a hang shows.
    worker = threading.Thread(target=lambda: result.update(
        verdicts=images.check_files([fifo, zero])), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "checking a FIFO blocked"
    assert all("not a regular file" in v.error for v in result["verdicts"])
    for path in (fifo, zero):
        with pytest.raises(CorruptImageError, match="not a regular file"):
            images.read_image(path)


def test_a_file_larger_than_any_image_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1000)
    path = image_trees.write(tmp_path / "big.jpg", image_trees.jpeg_bytes(1) + b"\0" * 2000)
    with pytest.raises(CorruptImageError, match="more than the 1000"):
        images.read_image(path)


def test_check_header_refuses_absurd_dimensions_without_decoding(tmp_path):
    # 9000 x 9000 declared in the header, with no pixel data at all: a decode would fail with
    # another message, so naming the size shows it was refused from the header alone.
    bomb = image_trees.raw_png(9000, 9000, bit_depth=8, color_type=2)
    with pytest.raises(CorruptImageError, match="9000x9000"):
        images.check_header(bomb)
    path = image_trees.write(tmp_path / "bomb.png", bomb)
    with pytest.raises(CorruptImageError, match="decompression bomb"):
        images.read_image(path)
    # Far beyond Pillow's own limit: still our error type, not Pillow's.
    with pytest.raises(CorruptImageError):
        images.check_header(image_trees.raw_png(100_000, 100_000, bit_depth=8, color_type=2))


def test_check_header_returns_format_mode_and_size():
    data = image_trees.jpeg_bytes(1)
    assert images.check_header(data) == ("JPEG", "RGB", image_trees.SIZE, image_trees.SIZE)
    with pytest.raises(CorruptImageError):
        images.check_header(data, max_pixels=image_trees.SIZE ** 2 - 1)
    # In words: Pillow's own message names an in-memory object ("<_io.BytesIO object at 0x...>").
    with pytest.raises(CorruptImageError, match=r"^not an image file \(unknown format") as error:
        images.check_header(b"plain text")
    assert "BytesIO" not in str(error.value) and "0x" not in str(error.value)


def test_decode_and_resize_eagerly_and_in_tf_data():
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :, 0] = 200
    for encoded in (tf.io.encode_png(image), tf.io.encode_jpeg(image, quality=100)):
        eager = decoding.decode_and_resize(encoded, image_size=16)
        assert eager.dtype == tf.uint8 and eager.shape == (16, 16, 3)
        assert abs(int(eager[8, 8, 0]) - 200) <= 2 and int(eager[8, 8, 1]) <= 2
        mapped = tf.data.Dataset.from_tensors(encoded).map(
            lambda b: decoding.decode_and_resize(b, image_size=16))
        np.testing.assert_array_equal(next(iter(mapped)).numpy(), eager.numpy())


# --- the input contract: full decode, bilinear resize ------------------------------------------


def _contract(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """INPUT_CONTRACT written out with plain TensorFlow, as a Keras user would feed the model."""
    resized = tf.image.resize(pixels, [image_size, image_size], method="bilinear")
    return tf.cast(tf.round(resized), tf.uint8).numpy()


@pytest.mark.parametrize("height, width, grey", REAL_SIZES)
@pytest.mark.parametrize("image_size", [64, 128, 224])
def test_bytes_and_pixels_of_any_size_reach_the_model_alike(height, width, grey, image_size):
    # Pixels decoded by Pillow and resized by tf.image.resize (serve, a Keras user) and the bytes
    # decoded by the pipeline (serve_bytes, predict, training) are the same image.
    data = image_trees.slice_like_jpeg(height, width, grey=grey, seed=height + width)
    with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("RGB"))
    from_bytes = decoding.decode_and_resize(tf.constant(data), image_size=image_size).numpy()
    assert from_bytes.dtype == np.uint8 and from_bytes.shape == (image_size, image_size, 3)
    for name, from_pixels in (("decoding.resize", decoding.resize(pixels, image_size).numpy()),
                              ("tf.image.resize", _contract(pixels, image_size))):
        difference = np.abs(from_bytes.astype(int) - from_pixels)
        assert difference.max() <= 1, (name, difference.max(), difference.mean())
    mapped = tf.data.Dataset.from_tensors(data).map(
        lambda b: decoding.decode_and_resize(b, image_size=image_size))
    assert mapped.element_spec.shape == (image_size, image_size, 3)
    np.testing.assert_array_equal(next(iter(mapped)).numpy(), from_bytes)


def test_png_and_small_jpeg_are_decoded_in_full_and_resized_as_before():
    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 256, (600, 520, 3), np.uint8),
                  rng.integers(0, 256, (90, 70, 3), np.uint8)):
        for encoded in (tf.io.encode_png(image).numpy(),
                        tf.io.encode_jpeg(image, quality=90).numpy()):
            full = decoding.decode(tf.constant(encoded))
            want = tf.cast(tf.round(tf.image.resize(full, [64, 64])), tf.uint8)
            np.testing.assert_array_equal(
                decoding.decode_and_resize(tf.constant(encoded), image_size=64), want)


def _smooth_jpeg(height, width, *, grey=False) -> bytes:
    """A JPEG of a smooth pattern (like an MRI slice, unlike noise)."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0),
                      (x * 255.0 / width), (y * 255.0 / height)], axis=-1)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if grey:
        image = image[:, :, :1]
    return tf.io.encode_jpeg(image, quality=95).numpy()


def test_the_reduced_check_refuses_exactly_what_a_full_decode_refuses():
    # decoding.check decodes JPEGs at 1/8 scale; it must still read every coefficient, so a file
    # cut or garbled anywhere fails it exactly when it fails the full decode.
    rng = np.random.default_rng(3)
    smooth = _smooth_jpeg(512, 512)
    grey = tf.io.encode_jpeg(rng.integers(0, 256, (256, 384, 1), np.uint8), quality=95).numpy()
    progressive = io.BytesIO()
    Image.fromarray(image_trees.pixels(2)).save(progressive, format="JPEG", progressive=True)
    outcomes = []
    for data in (smooth, grey, progressive.getvalue()):
        damaged = [data[:cut] for cut in np.linspace(len(data) // 10, len(data) - 3, 12, dtype=int)]
        for offset in np.linspace(len(data) // 5, len(data) - 10, 8, dtype=int):
            garbled = bytearray(data)
            garbled[offset:offset + 8] = rng.integers(0, 256, 8, np.uint8).tobytes()
            damaged.append(bytes(garbled))
        for candidate in [data] + damaged:
            verdicts = []
            for decoder in (decoding.decode, decoding.check):
                try:
                    decoder(tf.constant(candidate))
                    verdicts.append(True)
                except tf.errors.InvalidArgumentError:
                    verdicts.append(False)
            outcomes.append(tuple(verdicts))
    assert all(full == reduced for full, reduced in outcomes), outcomes
    assert (True, True) in outcomes and (False, False) in outcomes  # Both kinds were met.
