"""Tests of mri_tfdata.synthetic: layout, counts, determinism, reuse, class signal and the CLI."""

import collections
import subprocess
import sys

import numpy as np
import pytest

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import images, kaggle_layout, synthetic

SMALL = dict(train_per_class=3, test_per_class=2, image_size=24)


def tree_bytes(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_writes_a_kaggle_tree_with_the_requested_counts(tmp_path):
    root = synthetic.write_synthetic_dataset(tmp_path / "demo", **SMALL)
    splits = kaggle_layout.find_split_dirs(root)
    assert splits == {"train": root / "Training", "test": root / "Testing"}
    for split, per_class in (("train", 3), ("test", 2)):
        files = kaggle_layout.list_examples(splits[split])
        assert collections.Counter(f.label for f in files) == {
            label: per_class for label in range(4)
        }
        for f in files:  # 8-bit RGB JPEGs of the requested size, stored as they are.
            stored = images.read_image(f.path)
            assert (stored.format, stored.reencoded) == ("jpeg", False)
            assert images.check_header(stored.data) == ("JPEG", "RGB", 24, 24)
    assert (root / "Training/glioma/Tr-gl_0000.jpg").is_file()
    assert (root / "Testing/pituitary/Te-pi_0001.jpg").is_file()


def test_same_arguments_give_identical_files_and_another_seed_differs(tmp_path):
    first = tree_bytes(synthetic.write_synthetic_dataset(tmp_path / "a", **SMALL))
    second = tree_bytes(synthetic.write_synthetic_dataset(tmp_path / "b", **SMALL))
    other = tree_bytes(synthetic.write_synthetic_dataset(tmp_path / "c", seed=1, **SMALL))
    assert first == second
    images = [name for name in first if name.endswith(".jpg")]
    assert all(first[name] != other[name] for name in images)
    assert len(set(first[name] for name in images)) == len(images)  # No accidental duplicates.


def test_a_complete_tree_is_reused_and_other_settings_are_refused(tmp_path):
    root = synthetic.write_synthetic_dataset(tmp_path / "demo", **SMALL)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    assert synthetic.write_synthetic_dataset(root, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == mtimes
    with pytest.raises(UserError, match="other settings"):
        synthetic.write_synthetic_dataset(root, **{**SMALL, "image_size": 32})


def test_never_writes_into_a_folder_holding_something_else(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(UserError, match="not overwritten"):
        synthetic.write_synthetic_dataset(tmp_path, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_an_empty_folder_is_filled_and_no_staging_folder_is_left(tmp_path):
    (tmp_path / "demo").mkdir()
    synthetic.write_synthetic_dataset(tmp_path / "demo", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert (tmp_path / "demo" / synthetic.MARKER_NAME).is_file()


def test_leaked_test_images_copy_training_images(tmp_path):
    root = synthetic.write_synthetic_dataset(tmp_path / "demo", leaked_test_images=5, **SMALL)
    leaked = root / "Testing/glioma/Te-gl_0002.jpg"  # Test numbers continue after the 2 originals.
    assert leaked.read_bytes() == (root / "Training/glioma/Tr-gl_0000.jpg").read_bytes()
    assert (root / "Testing/glioma/Te-gl_0003.jpg").read_bytes() == (
        root / "Training/glioma/Tr-gl_0001.jpg"
    ).read_bytes()
    assert len(list(root.glob("Testing/*/*.jpg"))) == 8 + 5


def lesion_centroids(label, count=6, size=64):
    """Where the image of `label` is brighter than the notumor image drawn with the same seed."""
    grid_x, grid_y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size))
    centroids = []
    for i in range(count):

        def draw(class_label):
            return synthetic.draw_image(
                class_label, image_size=size, rng=np.random.default_rng([5, i])
            )[..., 0].astype(float)

        excess = np.clip(draw(label) - draw(2), 0, None)
        excess[excess < 8] = 0  # Keep clear differences only, not the faint rim of a soft edge.
        if not excess.any():
            centroids.append(None)
            continue
        centroids.append(
            ((excess * grid_x).sum() / excess.sum(), (excess * grid_y).sum() / excess.sum())
        )
    return centroids


def test_each_class_draws_its_lesion_where_it_belongs():
    # notumor: no lesion, so the same seed gives the very same image.
    assert lesion_centroids(2) == [None] * 6
    for x, y in lesion_centroids(3):  # pituitary: bottom centre.
        assert abs(x) < 0.15 and 0.35 < y < 0.7
    for x, y in lesion_centroids(1):  # meningioma: against the skull.
        assert np.hypot(x, y) > 0.55
    for x, y in lesion_centroids(0):  # glioma: inside the brain.
        assert np.hypot(x, y) < 0.55


def test_rejects_nonsense_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        synthetic.write_synthetic_dataset(tmp_path / "x", image_size=8)
    with pytest.raises(ValueError, match="leaked_test_images"):
        synthetic.write_synthetic_dataset(tmp_path / "x", train_per_class=1, leaked_test_images=5)


def test_cli_writes_the_tree_and_refuses_bad_flags(tmp_path):
    command = [
        sys.executable,
        "-m",
        "mri_tfdata.synthetic",
        f"--out={tmp_path / 'demo'}",
        "--train_per_class=1",
        "--test_per_class=1",
        "--image_size=16",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "demo").glob("*/*/*.jpg"))) == 8
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "mri_tfdata.synthetic",
            "--image_size=4",
            f"--out={tmp_path / 'other'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "error: --image_size=4 is too small" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_default_folder_follows_xdg_cache_home_and_the_settings(monkeypatch, tmp_path):
    from mri_tfdata.data.dataspec import DataSpec

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    spec = DataSpec(source="synthetic", synthetic_train_per_class=3, synthetic_test_per_class=2,
                    synthetic_image_size=24)
    root = spec.synthetic_root()
    assert root.parent == tmp_path / "xdg" / "mri_tfdata" / "synthetic"
    assert root.name.startswith("train3-test2-24px-")
    other = DataSpec(source="synthetic", synthetic_train_per_class=4, synthetic_test_per_class=2,
                     synthetic_image_size=24).synthetic_root()
    assert other.parent == root.parent and other != root
    # A data_dir holds the same folder name instead.
    given = DataSpec(source="synthetic", data_dir=str(tmp_path / "mine"),
                     synthetic_train_per_class=3, synthetic_test_per_class=2,
                     synthetic_image_size=24).synthetic_root()
    assert given == tmp_path / "mine" / root.name
    spec.prepare()
    assert (root / synthetic.MARKER_NAME).is_file()


def test_a_tree_of_another_format_version_is_not_reused(monkeypatch, tmp_path):
    from mri_tfdata.core import caches

    root = synthetic.write_synthetic_dataset(tmp_path / "demo", **SMALL)
    monkeypatch.setattr(caches, "FORMAT_VERSION", caches.FORMAT_VERSION + 1)
    with pytest.raises(UserError, match="other settings"):
        synthetic.write_synthetic_dataset(root, **SMALL)
