"""Tests of the class set taken from the data: inference from Training/, --classes, mismatches."""

import subprocess
import sys

import image_trees
import numpy as np
import pytest
import tensorflow as tf

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import dataspec, kaggle_layout, sources

OWN_CLASSES = ("zebra", "Cat", "dog")  # Deliberately unsorted; sorted: Cat, dog, zebra.


def labels_by_folder(source):
    """{class folder name of each file: set of labels it got}, from the source's index."""
    names, labels = source.index()
    found = {}
    for name, label in zip(names, labels):
        found.setdefault(name.split("/")[1], set()).add(int(label))
    return found


def test_classes_are_the_training_folders_sorted_as_flow_from_directory(tmp_path):
    image_trees.write_tree(tmp_path, train_per_class=2, test_per_class=1, size=16,
                           class_names=("Cat", "dog", "zebra"))
    assert kaggle_layout.infer_class_names(tmp_path / "Training") == ("Cat", "dog", "zebra")
    source = sources.load_folder_source(tmp_path, split="train")
    assert source.class_names == ("Cat", "dog", "zebra")
    assert labels_by_folder(source) == {"Cat": {0}, "dog": {1}, "zebra": {2}}
    # Every image is labelled as its pixels say (write_tree colours label i with colour i).
    test = sources.load_folder_source(tmp_path, split="test")
    assert labels_by_folder(test) == {"Cat": {0}, "dog": {1}, "zebra": {2}}
    pairs = [(tf.io.decode_image(data, channels=3).numpy(), int(label))
             for data, label in test.dataset]
    assert image_trees.labels_from_pixels([image for image, _ in pairs]).tolist() == \
        [label for _, label in pairs]


def test_kaggle_folders_and_their_aliases_keep_the_kaggle_classes_and_labels(tmp_path):
    image_trees.write_tree(tmp_path / "kaggle", train_per_class=1, test_per_class=1, size=16)
    source = sources.load_folder_source(tmp_path / "kaggle", split="train")
    assert source.class_names == kaggle_layout.CLASS_NAMES
    assert labels_by_folder(source) == {name: {label} for label, name in
                                        enumerate(kaggle_layout.CLASS_NAMES)}
    # Older names, in an order that sorts differently, and a class missing: same labels.
    aliases = ("pituitary_tumor", "no_tumor", "Glioma_Tumor")
    image_trees.write_tree(tmp_path / "old", train_per_class=1, test_per_class=1, size=16,
                           class_names=aliases)
    old = sources.load_folder_source(tmp_path / "old", split="train")
    assert old.class_names == kaggle_layout.CLASS_NAMES
    assert labels_by_folder(old) == {"pituitary_tumor": {3}, "no_tumor": {2},
                                     "Glioma_Tumor": {0}}


def test_given_classes_fix_the_order_and_refuse_an_unlisted_folder(tmp_path):
    image_trees.write_tree(tmp_path, train_per_class=1, test_per_class=1, size=16,
                           class_names=OWN_CLASSES)
    source = sources.load_folder_source(tmp_path, split="train",
                                        class_names=("zebra", "dog", "Cat", "bird"))
    assert source.class_names == ("zebra", "dog", "Cat", "bird")
    assert labels_by_folder(source) == {"zebra": {0}, "dog": {1}, "Cat": {2}}
    with pytest.raises(UserError, match=r"Unknown class folder 'dog'.*zebra, Cat.*--classes"):
        sources.load_folder_source(tmp_path, split="train", class_names=("zebra", "Cat"))
    spec = dataspec.DataSpec(source="folder", data_dir=str(tmp_path), class_names=("dog", "Cat",
                                                                                   "zebra"))
    assert spec.open("test").class_names == ("dog", "Cat", "zebra")


def test_an_extra_class_in_testing_is_an_error_naming_it(tmp_path):
    image_trees.write_tree(tmp_path, train_per_class=1, test_per_class=1, size=16,
                           class_names=OWN_CLASSES)
    image_trees.write(tmp_path / "Testing/horse/h.jpg", image_trees.jpeg_bytes(0))
    for split in ("test", "train"):  # The tree is refused as a whole, whichever split is read.
        with pytest.raises(UserError, match=r"Testing holds the class folder 'horse', which is "
                                            r"not among the classes Cat, dog, zebra") as error:
            sources.load_folder_source(tmp_path, split=split)
        assert error.value.exit_code == 1 and "\n" not in str(error.value)


def test_a_class_missing_from_testing_keeps_the_training_labels(tmp_path):
    image_trees.write_tree(tmp_path, train_per_class=1, test_per_class=1, size=16,
                           class_names=OWN_CLASSES)
    for path in (tmp_path / "Testing/dog").iterdir():
        path.unlink()
    (tmp_path / "Testing/dog").rmdir()
    test = sources.load_folder_source(tmp_path, split="test")
    assert test.class_names == ("Cat", "dog", "zebra")
    assert labels_by_folder(test) == {"Cat": {0}, "zebra": {2}}


def test_an_empty_training_class_follows_the_missing_class_rule(tmp_path):
    image_trees.write_tree(tmp_path, train_per_class=2, test_per_class=1, size=16,
                           class_names=("a", "b"))
    (tmp_path / "Training/c").mkdir()
    train = sources.load_folder_source(tmp_path, split="train")
    assert train.class_names == ("a", "b", "c")
    with pytest.raises(UserError, match="no example of c"):
        dataspec.check_splits({"train_split": ("train", train)}, batch_size=1)
    dataspec.check_splits({"train_split": ("train", train)}, batch_size=1,
                          allow_missing_classes=True)
    assert np.bincount(train.labels, minlength=3).tolist() == [2, 2, 0]


def test_a_training_folder_without_class_folders_is_refused(tmp_path):
    (tmp_path / "Training").mkdir()
    image_trees.write(tmp_path / "Testing/a/x.jpg", image_trees.jpeg_bytes(0))
    with pytest.raises(UserError, match="holds no class folder"):
        sources.load_folder_source(tmp_path, split="test")


@pytest.mark.parametrize("folder", ["bad\tname", "new\nline", " "])
def test_a_class_folder_that_cannot_name_an_output_is_refused_before_training(tmp_path, folder):
    # A newline would shift the export's class_names.txt; the model file would refuse it only
    # after the whole run.
    image_trees.write_tree(tmp_path, train_per_class=1, test_per_class=1, size=16,
                           class_names=("good", folder))
    with pytest.raises(UserError, match="cannot name a classifier's outputs") as refused:
        sources.load_folder_source(tmp_path, split="train")
    assert "Rename the class folders" in str(refused.value)
    with pytest.raises(UserError, match="empty or hold control characters"):
        kaggle_layout.infer_class_names(tmp_path / "Training", ("good", folder))


@pytest.mark.parametrize("classes, words", [
    ("a,a", "appear more than once"), ("a", "at least 2"), ("a,,b", "empty"),
    ("a\tb,c", "control characters")])
def test_classes_that_cannot_name_outputs_are_a_usage_error_naming_the_flag(tmp_path, classes,
                                                                            words):
    # Through a flagfile, where a tab can reach the flag.
    flagfile = tmp_path / "classes.flags"
    flagfile.write_text(f"--source=folder\n--data_dir={tmp_path}\n--classes={classes}\n")
    proc = subprocess.run([sys.executable, "-m", "mri_tfdata.train", f"--flagfile={flagfile}",
                           f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True,
                          timeout=120)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, err
    assert err.startswith("error: --classes=") and words in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
