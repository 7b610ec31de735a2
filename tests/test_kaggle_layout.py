"""Tests of mri_tfdata.kaggle_layout: split and class folders, junk, image reading, bomb checks."""

import io
import time

import numpy as np
import pytest
from PIL import Image

import kaggle_trees
from mri_tfdata import kaggle_layout
from mri_tfdata.errors import UserError
from mri_tfdata.kaggle_layout import CorruptImageError


def decode(stored):
    return np.asarray(Image.open(io.BytesIO(stored.data)))


# --- split folders ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "train,test",
    [("Training", "Testing"), ("train", "test"), ("TRAINING", "TESTING"), ("Train", "Test")],
)
def test_find_split_dirs_accepts_kaggle_and_lower_and_upper_case_names(tmp_path, train, test):
    kaggle_trees.write_simple_tree(tmp_path, train=train, test=test)
    assert kaggle_layout.find_split_dirs(tmp_path) == {
        "train": tmp_path / train,
        "test": tmp_path / test,
    }


@pytest.mark.parametrize("validation", ["validation", "val", "Validation"])
def test_find_split_dirs_finds_an_optional_validation_split(tmp_path, validation):
    kaggle_trees.write_simple_tree(tmp_path)
    kaggle_trees.write(tmp_path / validation / "glioma" / "v.jpg", kaggle_trees.jpeg_bytes(0))
    assert kaggle_layout.find_split_dirs(tmp_path)["validation"] == tmp_path / validation


def test_find_split_dirs_looks_inside_one_wrapping_folder(tmp_path):
    kaggle_trees.write_simple_tree(tmp_path / "brain-tumor-mri-dataset")
    kaggle_trees.write(
        tmp_path / ".DS_Store", b"junk"
    )  # Junk beside the wrapper is not a 2nd folder.
    kaggle_trees.write(tmp_path / "notes.txt", b"files beside the wrapper do not matter")
    splits = kaggle_layout.find_split_dirs(tmp_path)
    assert splits["train"] == tmp_path / "brain-tumor-mri-dataset" / "Training"


def test_missing_testing_folder_lists_the_expected_paths_and_the_download(tmp_path):
    kaggle_trees.write_simple_tree(tmp_path)
    for path in sorted((tmp_path / "Testing").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "Testing").rmdir()
    with pytest.raises(UserError) as error:
        kaggle_layout.find_split_dirs(tmp_path)
    message = str(error.value)
    assert "No test split folder" in message
    assert str(tmp_path / "Testing") in message and str(tmp_path / "Training") in message
    assert kaggle_layout.DOWNLOAD_URL in message


@pytest.mark.parametrize("state", ["absent", "empty", "only_junk"])
def test_absent_or_empty_root_is_a_user_error_pointing_to_the_download(tmp_path, state):
    root = tmp_path / "data"
    if state != "absent":
        root.mkdir()
    if state == "only_junk":
        kaggle_trees.write(root / ".DS_Store", b"junk")
    with pytest.raises(UserError, match="masoudnickparvar/brain-tumor-mri-dataset") as error:
        kaggle_layout.find_split_dirs(root)
    assert ("does not exist" if state == "absent" else "is empty") in str(error.value)
    assert str(root / "Training") in str(error.value)


def test_two_folders_for_one_split_are_refused(tmp_path):
    kaggle_trees.write_simple_tree(tmp_path)
    kaggle_trees.write_simple_tree(tmp_path, train="train", test="Testing")
    with pytest.raises(UserError, match="2 folders for the train split"):
        kaggle_layout.find_split_dirs(tmp_path)


# --- class folders and junk ------------------------------------------------------------------


def test_list_examples_labels_aliases_and_ignores_junk(tmp_path):
    expected = kaggle_trees.write_messy_tree(tmp_path)
    splits = kaggle_layout.find_split_dirs(tmp_path)
    train = kaggle_layout.list_examples(splits["train"])
    test = kaggle_layout.list_examples(splits["test"])
    corrupt_train = [c for c in expected["corrupt"] if c.startswith("Training/")]
    # Corrupt files are listed (they are only detected when read); junk never is.
    assert {e.relpath: e.label for e in train} == {
        **expected["train"],
        **{c: 3 for c in corrupt_train},
    }
    assert {e.relpath for e in test} == set(expected["test"]) | {"Testing/glioma/truncated.jpg"}
    assert [e.relpath for e in train] == sorted(e.relpath for e in train)
    assert all(e.path == tmp_path / e.relpath for e in train + test)


def test_class_aliases_map_to_the_kaggle_labels():
    for alias, name in [
        ("glioma_tumor", "glioma"),
        ("meningioma_tumor", "meningioma"),
        ("no_tumor", "notumor"),
        ("pituitary_tumor", "pituitary"),
        ("Glioma", "glioma"),
    ]:
        assert kaggle_layout.CLASS_NAMES[kaggle_layout.class_label(alias)] == name


def test_unknown_class_folder_is_named_with_the_accepted_names(tmp_path):
    kaggle_trees.write_simple_tree(
        tmp_path, classes=("glioma", "meningioma", "astrocytoma", "pituitary")
    )
    with pytest.raises(UserError) as error:
        kaggle_layout.list_examples(tmp_path / "Training")
    message = str(error.value)
    assert "'astrocytoma'" in message
    for name in kaggle_layout.CLASS_NAMES + ("glioma_tumor", "no_tumor"):
        assert name in message


def test_a_split_without_images_is_a_user_error(tmp_path):
    kaggle_trees.write(tmp_path / "Training" / "glioma" / "notes.txt", b"no image here")
    with pytest.raises(UserError, match="holds no .jpg/.jpeg/.png image"):
        kaggle_layout.list_examples(tmp_path / "Training")


# --- reading images --------------------------------------------------------------------------


def test_rgb_jpeg_and_rgb_png_keep_their_original_bytes(tmp_path):
    jpeg = kaggle_trees.write(tmp_path / "a.jpg", kaggle_trees.jpeg_bytes(1))
    png = kaggle_trees.write(
        tmp_path / "a.png", kaggle_trees.png_bytes(Image.fromarray(kaggle_trees.pixels(1)))
    )
    for path, fmt in [(jpeg, "jpeg"), (png, "png")]:
        stored = kaggle_layout.read_rgb_image(path)
        assert (stored.data, stored.format, stored.reencoded) == (path.read_bytes(), fmt, False)


def test_a_png_named_jpg_is_recognised_by_content(tmp_path):
    path = kaggle_trees.write(
        tmp_path / "a.jpg", kaggle_trees.png_bytes(Image.fromarray(kaggle_trees.pixels(1)))
    )
    assert kaggle_layout.read_rgb_image(path).format == "png"


def test_grayscale_png_and_jpeg_become_rgb(tmp_path):
    grey = kaggle_trees.pixels(2)[:, :, 0]
    png = kaggle_trees.write(tmp_path / "g.png", kaggle_trees.png_bytes(Image.fromarray(grey)))
    stored = kaggle_layout.read_rgb_image(png)
    assert stored.reencoded and stored.format == "png"
    np.testing.assert_array_equal(decode(stored), np.repeat(grey[:, :, None], 3, axis=2))
    jpeg = kaggle_trees.write(tmp_path / "g.jpg", kaggle_trees.jpeg_bytes(2, "L"))
    assert decode(kaggle_layout.read_rgb_image(jpeg)).shape == (
        kaggle_trees.SIZE,
        kaggle_trees.SIZE,
        3,
    )


def test_rgba_png_becomes_rgb_with_transparent_parts_black(tmp_path):
    path = kaggle_trees.write(tmp_path / "a.png", kaggle_trees.rgba_png(3))
    image = decode(kaggle_layout.read_rgb_image(path))
    assert image.shape == (kaggle_trees.SIZE, kaggle_trees.SIZE, 3)
    half = kaggle_trees.SIZE // 2
    assert not image[:, :half].any()
    np.testing.assert_array_equal(image[:, half:], kaggle_trees.pixels(3)[:, half:])


def test_palette_png_becomes_rgb(tmp_path):
    palette = Image.fromarray(kaggle_trees.pixels(5)).convert("P")
    path = kaggle_trees.write(tmp_path / "p.png", kaggle_trees.png_bytes(palette))
    np.testing.assert_array_equal(
        decode(kaggle_layout.read_rgb_image(path)), np.asarray(palette.convert("RGB"))
    )


def test_cmyk_jpeg_becomes_rgb_with_similar_colours(tmp_path):
    path = kaggle_trees.write(tmp_path / "c.jpg", kaggle_trees.jpeg_bytes(4, "CMYK"))
    stored = kaggle_layout.read_rgb_image(path)
    assert stored.reencoded and Image.open(io.BytesIO(stored.data)).mode == "RGB"
    # JPEG is lossy and the pixels are random noise, so compare the mean colour only.
    np.testing.assert_allclose(
        decode(stored).mean(axis=(0, 1)), kaggle_trees.pixels(4).mean(axis=(0, 1)), atol=12
    )


def test_16bit_grayscale_png_is_scaled_to_8_bits(tmp_path):
    for value, expected in [(65535, 255), (257 * 100, 100), (0, 0)]:
        path = kaggle_trees.write(tmp_path / f"{value}.png", kaggle_trees.gray16_png(value))
        image = decode(kaggle_layout.read_rgb_image(path))
        assert image.dtype == np.uint8 and image.shape[-1] == 3
        assert (image == expected).all(), (value, np.unique(image))


def test_16bit_rgb_png_is_converted_not_kept(tmp_path):
    path = kaggle_trees.write(tmp_path / "rgb48.png", kaggle_trees.rgb48_png(257 * 200))
    stored = kaggle_layout.read_rgb_image(path)
    assert stored.reencoded and stored.data != path.read_bytes()
    assert stored.data[24] == 8  # The PNG header's bit depth.
    assert (decode(stored) == 200).all()


@pytest.mark.parametrize(
    "content",
    [b"", b"this is a text file named .jpg\n", kaggle_trees.truncated_jpeg(7)],
    ids=["zero_bytes", "text", "truncated"],
)
def test_unreadable_files_raise_corrupt_image_error(tmp_path, content):
    path = kaggle_trees.write(tmp_path / "bad.jpg", content)
    with pytest.raises(CorruptImageError):
        kaggle_layout.read_rgb_image(path)
    assert issubclass(CorruptImageError, ValueError)


# --- decompression bombs ---------------------------------------------------------------------


def test_check_image_header_refuses_absurd_dimensions_without_decoding(tmp_path):
    # 9000 x 9000 declared in the header, with no pixel data at all: refusing it must not decode.
    bomb = kaggle_trees.raw_png(9000, 9000, bit_depth=8, color_type=2)
    start = time.perf_counter()
    with pytest.raises(CorruptImageError, match="9000x9000"):
        kaggle_layout.check_image_header(bomb)
    assert time.perf_counter() - start < 1.0
    path = kaggle_trees.write(tmp_path / "bomb.png", bomb)
    with pytest.raises(CorruptImageError, match="decompression bomb"):
        kaggle_layout.read_rgb_image(path)
    # Far beyond Pillow's own limit: still our error type, not Pillow's.
    with pytest.raises(CorruptImageError):
        kaggle_layout.check_image_header(
            kaggle_trees.raw_png(100_000, 100_000, bit_depth=8, color_type=2)
        )


def test_check_image_header_returns_the_size_and_honours_max_pixels(tmp_path):
    path = kaggle_trees.write(tmp_path / "a.jpg", kaggle_trees.jpeg_bytes(1))
    assert kaggle_layout.check_image_header(path) == (kaggle_trees.SIZE, kaggle_trees.SIZE)
    with pytest.raises(CorruptImageError):
        kaggle_layout.check_image_header(path, max_pixels=kaggle_trees.SIZE**2 - 1)
    with pytest.raises(CorruptImageError, match="not a readable image"):
        kaggle_layout.check_image_header(b"plain text")
