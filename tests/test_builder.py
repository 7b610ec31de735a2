"""Tests of the brain_tumor_mri TFDS builder over generated trees holding every special case."""

import hashlib
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import image_trees
import numpy as np
import pytest
import tensorflow_datasets as tfds

import builders.brain_tumor_mri  # noqa: F401  (registers "brain_tumor_mri" with TFDS)
from builders.brain_tumor_mri import brain_tumor_mri_dataset_builder
from mri_tfdata.core.errors import UserError
from mri_tfdata.data import kaggle_layout, sources

BUILDER_DIR = pathlib.Path(brain_tumor_mri_dataset_builder.__file__).parent


def build(manual_dir, data_dir, config="default"):
    builder = brain_tumor_mri_dataset_builder.Builder(data_dir=str(data_dir), config=config)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def examples(data_dir, split, config="default", decode_images=True):
    """{filename: example} read back with tfds.load, as a user would."""
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    ds = tfds.load(
        f"brain_tumor_mri/{config}", split=split, data_dir=str(data_dir), decoders=decoders
    )
    return {ex["filename"].decode(): ex for ex in tfds.as_numpy(ds)}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("manual")
    return root, image_trees.write_messy_tree(root)


@pytest.fixture(scope="module")
def default_build(messy, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    return build(messy[0], data_dir), data_dir


def test_default_config_keeps_every_readable_image_with_its_label(messy, default_build):
    _, expected = messy
    _, data_dir = default_build
    for split in ("train", "test"):
        got = examples(data_dir, split)
        assert {name: int(ex["label"]) for name, ex in got.items()} == expected[split]
        for ex in got.values():
            assert (
                ex["image"].dtype == np.uint8
                and ex["image"].ndim == 3
                and ex["image"].shape[-1] == 3
            )


def test_images_are_converted_to_8bit_rgb_or_kept_as_they_are(messy, default_build):
    root, _ = messy
    _, data_dir = default_build
    raw = examples(data_dir, "train", decode_images=False)
    # Already 8-bit RGB JPEG/PNG: the original bytes, not a re-encoding.
    for name in ("Training/glioma_tumor/rgb.jpg", "Training/pituitary_tumor/rgb.png"):
        assert raw[name]["image"] == (root / name).read_bytes()
    # The hash is that of the original file, converted or not.
    for name, ex in raw.items():
        assert ex["sha256"].decode() == hashlib.sha256((root / name).read_bytes()).hexdigest()
    decoded = examples(data_dir, "train")
    assert (decoded["Training/no_tumor/gray16.png"]["image"] == 255).all()
    assert (decoded["Training/pituitary_tumor/rgb48.png"]["image"] == 200).all()
    assert not decoded["Training/meningioma/rgba.png"]["image"][:, : image_trees.SIZE // 2].any()
    gray = decoded["Training/glioma_tumor/gray.png"]["image"]
    np.testing.assert_array_equal(gray[..., 0], image_trees.pixels(2)[:, :, 0])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


def test_corrupt_files_are_skipped_logged_and_counted(messy, tmp_path, caplog):
    root, expected = messy
    with caplog.at_level(logging.INFO, logger="absl"):
        builder = build(root, tmp_path)
    assert builder.info.metadata["skipped_corrupt_files"] == {"train": 2, "test": 2}
    log = caplog.text
    for name in expected["corrupt"]:
        assert f"Skipping corrupt image {name!r}" in log
    assert "train: skipped 2 corrupt image file(s)" in log
    # The count is saved with the dataset, not only kept in memory.
    reloaded = tfds.builder("brain_tumor_mri", data_dir=str(tmp_path))
    assert reloaded.info.metadata["skipped_corrupt_files"] == {"train": 2, "test": 2}


def test_dedup_config_drops_duplicates_and_leaked_test_images(messy, tmp_path, caplog):
    root, expected = messy
    with caplog.at_level(logging.INFO, logger="absl"):
        builder = build(root, tmp_path, config="dedup")
    train, test = examples(tmp_path, "train", "dedup"), examples(tmp_path, "test", "dedup")
    assert set(train) == set(expected["train"]) - set(expected["train_duplicates"])
    assert set(test) == set(expected["test"]) - set(expected["leaked"])
    assert builder.info.metadata["dedup_dropped"] == {
        "train": {"duplicates_within_split": 1, "in_earlier_split": 0},
        "test": {"duplicates_within_split": 0, "in_earlier_split": 1},
    }
    assert (
        "test: dropped 0 duplicate(s) within the split and 1 image(s) also in an earlier split"
        in caplog.text
    )
    assert not {ex["sha256"] for ex in train.values()} & {ex["sha256"] for ex in test.values()}


def test_zip_archive_with_wrapping_folder_lower_case_splits_and_validation(tmp_path):
    source = tmp_path / "source"
    image_trees.write_simple_tree(
        source / "brain-tumor-mri-dataset",
        train="train",
        test="test",
        classes=("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"),
    )
    image_trees.write(
        source / "brain-tumor-mri-dataset/val/notumor/v.jpg", image_trees.jpeg_bytes(300)
    )
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "archive.zip", "w") as archive:
        for path in sorted(source.rglob("*.jpg")):
            archive.write(path, path.relative_to(source).as_posix())
    image_trees.write(manual / ".DS_Store", b"junk")
    build(manual, tmp_path / "data")
    train = examples(tmp_path / "data", "train")
    assert {name: int(ex["label"]) for name, ex in train.items()} == {
        "train/glioma_tumor/tr0.jpg": 0,
        "train/meningioma_tumor/tr1.jpg": 1,
        "train/no_tumor/tr2.jpg": 2,
        "train/pituitary_tumor/tr3.jpg": 3,
    }
    assert len(examples(tmp_path / "data", "test")) == 4
    assert list(examples(tmp_path / "data", "validation")) == ["val/notumor/v.jpg"]
    assert (manual / "archive.zip").exists()  # The user's download is left alone.


def test_unknown_class_folder_fails_naming_it(tmp_path):
    image_trees.write_simple_tree(tmp_path / "manual")
    image_trees.write(tmp_path / "manual/Testing/astrocytoma/x.jpg", image_trees.jpeg_bytes(0))
    with pytest.raises(UserError, match="'astrocytoma'.*glioma, meningioma, notumor, pituitary"):
        build(tmp_path / "manual", tmp_path / "data")


def test_missing_testing_folder_fails_listing_the_expected_paths(tmp_path):
    image_trees.write_simple_tree(tmp_path / "manual")
    shutil.rmtree(tmp_path / "manual/Testing")
    with pytest.raises(UserError, match="No test split folder") as error:
        build(tmp_path / "manual", tmp_path / "data")
    assert str(tmp_path / "manual/Testing") in str(error.value)
    assert "masoudnickparvar/brain-tumor-mri-dataset" in str(error.value)


def test_empty_manual_dir_fails_with_the_download_instructions(tmp_path):
    (tmp_path / "manual").mkdir()
    # TFDS itself checks manual_dir and quotes MANUAL_DOWNLOAD_INSTRUCTIONS, which list the paths.
    with pytest.raises(AssertionError, match="does not exist or is empty") as error:
        build(tmp_path / "manual", tmp_path / "data")
    assert "Training/{glioma,meningioma,notumor,pituitary}/*.jpg" in str(error.value)
    assert "masoudnickparvar/brain-tumor-mri-dataset" in str(error.value)


def test_importing_the_package_registers_the_builder():
    assert "brain_tumor_mri" in tfds.list_builders(with_community_datasets=False)
    assert [c.name for c in tfds.builder_cls("brain_tumor_mri").BUILDER_CONFIGS] == [
        "default",
        "dedup",
        "folders",
        "folders_dedup",
    ]


# The README's local build on every core, with 2 worker processes rather than one per core
# (direct_num_workers=0), so that the test costs the same on any machine.
EVERY_CORE = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"


def tfds_build(manual_dir, data_dir, *options):
    """Runs the README's `tfds build` command as a user would: the `tfds` CLI, a new process."""
    command = [str(pathlib.Path(sys.executable).with_name("tfds")), "build", str(BUILDER_DIR),
               f"--manual_dir={manual_dir}", f"--data_dir={data_dir}", "--config=dedup", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.integration
def test_tfds_build_on_one_and_on_every_core_stores_what_the_plain_builder_stored(tmp_path):
    dummy = BUILDER_DIR / "dummy_data"
    tfds_build(dummy, tmp_path / "one")
    tfds_build(dummy, tmp_path / "every", f"--beam_pipeline_options={EVERY_CORE}")
    # What the builder stored before it used Beam: every file, keyed by its relpath, labelled by
    # its folder, with its own bytes; in dedup the test copy of a training image is dropped.
    files = {path.relative_to(dummy).as_posix(): path.read_bytes()
             for path in sorted(dummy.rglob("*.jpg"))}
    train = {name for name in files if name.startswith("Training/")}
    expected = {"train": train,
                "test": {name for name in files if name not in train
                         and files[name] not in {files[t] for t in train}}}
    assert (len(expected["train"]), len(expected["test"])) == (12, 8)
    for data_dir in (tmp_path / "one", tmp_path / "every"):
        for split in ("train", "test"):
            got = examples(data_dir, split, "dedup", decode_images=False)
            assert set(got) == expected[split]
            for name, ex in got.items():
                assert ex["image"] == files[name]
                assert ex["sha256"].decode() == hashlib.sha256(files[name]).hexdigest()
                assert int(ex["label"]) == kaggle_layout.CLASS_NAMES.index(name.split("/")[1])
        # Counted by the worker processes, saved with the dataset by the launching one.
        assert tfds.builder("brain_tumor_mri/dedup", data_dir=str(data_dir)).info.metadata == {
            "skipped_corrupt_files": {"train": 0, "test": 0},
            "dedup_dropped": {
                "train": {"duplicates_within_split": 0, "in_earlier_split": 0},
                "test": {"duplicates_within_split": 0, "in_earlier_split": 1},
            },
        }


# Lines a good build must not print once the builder is loaded: Beam's and TFDS's noise.
ROOT = pathlib.Path(__file__).parents[1]
BUILD_NOISE = re.compile(r"Converting string literal type hint|Unparseable argument|prism|Prism"
                         r"|no `beam_runner` nor `beam_options`|dtype` is deprecated"
                         r"|Discarding unparseable args")


@pytest.mark.integration
def test_a_good_tfds_build_prints_only_its_own_lines(tmp_path):
    subprocess.run([sys.executable, "-m", "mri_tfdata.synthetic",
                    f"--out={tmp_path / 'manual'}",
                    "--train_per_class=2", "--test_per_class=1", "--image_size=32"],
                   check=True, capture_output=True)
    tfds_cli = pathlib.Path(sys.executable).with_name("tfds")
    proc = subprocess.run([str(tfds_cli), "build", str(ROOT / "builders" / "brain_tumor_mri"),
                           f"--manual_dir={tmp_path / 'manual'}", f"--data_dir={tmp_path / 'tfds'}",
                           "--config=default"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert not BUILD_NOISE.search(output), BUILD_NOISE.findall(output)
    assert len(output.splitlines()) <= 80, output


# What TensorFlow, CUDA and Beam print while `tfds` imports them, before the builder loads.
IMPORT_NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|Could not find cuda"
                          r"|cpu_feature_guard|cuInit|apitools")


def _mri_build(*args, cwd, verbosity=None):
    """Runs `mri-build` as its console script does, with TensorFlow's logging left at its default."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    argv = ["/venv/bin/mri-build", *args] + ([f"--verbosity={verbosity}"] if verbosity else [])
    return subprocess.run(
        [sys.executable, "-c", f"import sys; sys.argv = {argv!r}; "
                               "from mri_tfdata.build import console_main; console_main()"],
        capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.mark.integration
def test_mri_build_prints_only_the_builds_own_lines_from_any_folder(tmp_path):
    manual = image_trees.write_tree(tmp_path / "manual", train_per_class=2, test_per_class=1)
    proc = _mri_build(f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds'}",
                      "--config=default", cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert not IMPORT_NOISE.search(output), IMPORT_NOISE.findall(output)
    assert not BUILD_NOISE.search(output), BUILD_NOISE.findall(output)
    assert "train: 8 image files" in output and "skipped 0 corrupt image file(s)" in output
    got = examples(tmp_path / "tfds", "train", decode_images=False)
    assert len(got) == 8
    # A tree without Testing/: the builder's one paragraph, after nothing but the build's lines.
    shutil.rmtree(manual / "Testing")
    proc = _mri_build(f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds2'}",
                      "--config=default", cwd=tmp_path)
    assert proc.returncode == 1 and "error: No test split folder" in proc.stderr, proc.stderr
    assert not IMPORT_NOISE.search(proc.stderr) and "Traceback" not in proc.stderr
    # --verbosity=1 shows the libraries' lines again.
    loud = _mri_build(f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds2'}",
                      "--config=default", cwd=tmp_path, verbosity=1)
    if not IMPORT_NOISE.search(loud.stderr):
        pytest.skip("TensorFlow prints no start-up lines on this machine: nothing to hide")


def test_mri_build_answers_help_without_importing_tensorflow(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['/venv/bin/mri-build', '--help']\n"
         "try:\n    from mri_tfdata.build import console_main; console_main()\n"
         "except SystemExit as e:\n    print('EXIT', e.code)\n"
         "print('TF', 'tensorflow' in sys.modules)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert proc.stdout.startswith("Builds the brain_tumor_mri TFDS dataset")
    assert "--manual_dir=DIR" in proc.stdout and "EXIT 0" in proc.stdout
    assert "TF False" in proc.stdout


def test_folders_config_takes_the_classes_from_manual_dir_and_loads_them_from_the_build(
        tmp_path):
    image_trees.write_tree(tmp_path / "manual", train_per_class=1, test_per_class=1, size=16,
                           class_names=("ant", "bee"))
    # The Kaggle configs refuse other classes and name the config that takes them.
    with pytest.raises(UserError, match="'ant'.*--config=folders"):
        build(tmp_path / "manual", tmp_path / "kaggle_data")
    build(tmp_path / "manual", tmp_path / "data", config="folders")
    got = examples(tmp_path / "data", "train", config="folders", decode_images=False)
    assert {name: int(ex["label"]) for name, ex in got.items()} == {
        "Training/ant/Tr-000.png": 0, "Training/bee/Tr-000.png": 1}
    # A reader without the builder's code gets the class names from the build's info.
    source = sources.load_tfds_source(split="test", data_dir=str(tmp_path / "data"),
                                      config="folders")
    assert source.class_names == ("ant", "bee")


@pytest.mark.integration
@pytest.mark.parametrize("missing", ["Testing", "Training"])
def test_tfds_build_on_a_tree_without_a_split_is_one_paragraph_not_a_traceback(tmp_path, missing):
    import shutil

    root = image_trees.write_tree(tmp_path / "manual", train_per_class=1, test_per_class=1)
    shutil.rmtree(root / missing)
    command = [str(pathlib.Path(sys.executable).with_name("tfds")), "build", str(BUILDER_DIR),
               f"--manual_dir={root}", f"--data_dir={tmp_path / 'data'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    err = " ".join(result.stderr.split())
    split = "test" if missing == "Testing" else "train"
    assert result.returncode == 1, err[-3000:]
    # One paragraph, the last thing printed (TensorFlow's C++ start-up lines may come before it,
    # see docs/data.md).
    assert "Traceback" not in err and err[err.index("error: No "):].count("error: ") == 1, err
    assert result.stderr.rstrip().splitlines()[-1].endswith("pituitary."), err[-3000:]
    # What was expected, what was found, and the fix.
    assert f"error: No {split} split folder in {root}" in err, err[-3000:]
    assert "(it holds: " in err and "expected" in err and "kaggle" in err.lower(), err[-3000:]
