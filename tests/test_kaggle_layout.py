"""Tests of mri_tfdata.data.kaggle_layout: split and class folders, junk, links, listing."""

import os

import image_trees
import pytest

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import kaggle_layout

# --- split folders ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "train,test",
    [("Training", "Testing"), ("train", "test"), ("TRAINING", "TESTING"), ("Train", "Test")],
)
def test_find_split_dirs_accepts_kaggle_and_lower_and_upper_case_names(tmp_path, train, test):
    image_trees.write_simple_tree(tmp_path, train=train, test=test)
    assert kaggle_layout.find_split_dirs(tmp_path) == {
        "train": tmp_path / train,
        "test": tmp_path / test,
    }


@pytest.mark.parametrize("validation", ["validation", "val", "Validation"])
def test_find_split_dirs_finds_an_optional_validation_split(tmp_path, validation):
    image_trees.write_simple_tree(tmp_path)
    image_trees.write(tmp_path / validation / "glioma" / "v.jpg", image_trees.jpeg_bytes(0))
    assert kaggle_layout.find_split_dirs(tmp_path)["validation"] == tmp_path / validation


def test_find_split_dirs_looks_inside_one_wrapping_folder(tmp_path):
    image_trees.write_simple_tree(tmp_path / "brain-tumor-mri-dataset")
    image_trees.write(
        tmp_path / ".DS_Store", b"junk"
    )  # Junk beside the wrapper is not a 2nd folder.
    image_trees.write(tmp_path / "notes.txt", b"files beside the wrapper do not matter")
    splits = kaggle_layout.find_split_dirs(tmp_path)
    assert splits["train"] == tmp_path / "brain-tumor-mri-dataset" / "Training"


def test_missing_testing_folder_lists_the_expected_paths_and_the_download(tmp_path):
    image_trees.write_simple_tree(tmp_path)
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
        image_trees.write(root / ".DS_Store", b"junk")
    with pytest.raises(UserError, match="masoudnickparvar/brain-tumor-mri-dataset") as error:
        kaggle_layout.find_split_dirs(root)
    assert ("does not exist" if state == "absent" else "is empty") in str(error.value)
    assert str(root / "Training") in str(error.value)


def test_two_folders_for_one_split_are_refused(tmp_path):
    image_trees.write_simple_tree(tmp_path)
    image_trees.write_simple_tree(tmp_path, train="train", test="Testing")
    with pytest.raises(UserError, match="2 folders for the train split"):
        kaggle_layout.find_split_dirs(tmp_path)


# --- class folders and junk ------------------------------------------------------------------


def test_list_examples_labels_aliases_and_ignores_junk(tmp_path):
    expected = image_trees.write_messy_tree(tmp_path)
    splits = kaggle_layout.find_split_dirs(tmp_path)
    train = kaggle_layout.list_examples(splits["train"])
    test = kaggle_layout.list_examples(splits["test"])
    corrupt_train = [c for c in expected["corrupt"] if c.startswith("Training/")]
    # Corrupt files are listed (they are only detected when read); junk never is.
    assert {e.relpath: e.label for e in train} == {
        **expected["train"],
        **{c: 3 for c in corrupt_train},
    }
    corrupt_test = {c for c in expected["corrupt"] if c.startswith("Testing/")}
    assert {e.relpath for e in test} == set(expected["test"]) | corrupt_test
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
    image_trees.write_simple_tree(
        tmp_path, classes=("glioma", "meningioma", "astrocytoma", "pituitary")
    )
    with pytest.raises(UserError) as error:
        kaggle_layout.list_examples(tmp_path / "Training")
    message = str(error.value)
    assert "'astrocytoma'" in message
    for name in kaggle_layout.CLASS_NAMES + ("glioma_tumor", "no_tumor"):
        assert name in message


def test_a_split_without_images_is_a_user_error(tmp_path):
    image_trees.write(tmp_path / "Training" / "glioma" / "notes.txt", b"no image here")
    with pytest.raises(UserError, match="holds no .jpg/.jpeg/.png image"):
        kaggle_layout.list_examples(tmp_path / "Training")


def test_symlink_loops_and_second_links_list_each_file_once(tmp_path):
    image_trees.write_simple_tree(tmp_path)
    glioma = tmp_path / "Training" / "glioma"
    before = {os.stat(e.path).st_ino for e in kaggle_layout.list_examples(tmp_path / "Training")}
    os.symlink(glioma, glioma / "loop")  # A folder linking to itself: an endless walk.
    os.symlink(tmp_path / "Training", glioma / "up")  # A link to an ancestor.
    first = sorted(glioma.glob("*.jpg"))[0]
    os.link(first, glioma / "hard-link.jpg")
    os.symlink(first, glioma / "soft-link.jpg")
    listed = kaggle_layout.list_examples(tmp_path / "Training")
    # The same files once each (for a hard link, under whichever name is listed first).
    assert len(listed) == len(before) == 4
    assert {os.stat(e.path).st_ino for e in listed} == before
