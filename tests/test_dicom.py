"""Tests of DICOM input (data/dicom.py and its hooks): pixels, frames, bad files, identifiers."""

import logging
import pathlib
import shutil

import dicom_files
import numpy as np
import pytest

from mri_tfdata.data import decoding, dicom, images, kaggle_layout, sources

CLASSES = kaggle_layout.CLASS_NAMES


def _expected_linear(values, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR, written out plainly, in float64."""
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def test_twelve_bit_slice_is_rescaled_then_windowed(tmp_path):
    stored = dicom_files.ramp(8, 64)
    path = dicom_files.write(tmp_path / "a.dcm", stored, slope=2, intercept=-1024, center=1000,
                             width=3000)
    got = dicom.read_frame(path)
    want = _expected_linear(stored * 2.0 - 1024, 1000, 3000)
    assert got.dtype == np.uint8 and got.shape == (8, 64)
    assert np.abs(got.astype(int) - want).max() <= 1
    assert got[0, 0] == 0 and got[0, -1] == 255 and 0 < got[0, 16] < 255


def test_without_a_window_the_slice_spans_its_min_to_max(tmp_path):
    stored = dicom_files.ramp(4, 32, top=3000) + 500
    got = dicom.read_frame(dicom_files.write(tmp_path / "a.dcm", stored, intercept=-1024))
    assert got.min() == 0 and got.max() == 255
    np.testing.assert_array_equal(
        got, np.rint((stored - 500) * (255 / 3000)).astype(np.uint8))


def test_a_forced_window_replaces_the_files_own(tmp_path):
    stored = dicom_files.ramp(4, 32)
    path = dicom_files.write(tmp_path / "a.dcm", stored, center=2048, width=4096)
    forced = dicom.read_frame(path, window=dicom.Window(100, 51))
    np.testing.assert_array_equal(forced, _expected_linear(stored.astype(float), 100, 51))
    assert not np.array_equal(forced, dicom.read_frame(path))


def test_monochrome1_is_inverted(tmp_path):
    stored = dicom_files.ramp(4, 32)
    mono2 = dicom.read_frame(dicom_files.write(tmp_path / "m2.dcm", stored))
    mono1 = dicom.read_frame(dicom_files.write(tmp_path / "m1.dcm", stored,
                                               photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono1[0, 0] == 255


def test_rgb_file_is_read_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(dicom.read_frame(dicom_files.write(tmp_path / "c.dcm", rgb)),
                                  rgb)


def test_rle_compressed_file_reads_as_its_uncompressed_twin(tmp_path):
    stored = dicom_files.ramp(16, 16)
    plain = dicom_files.write(tmp_path / "plain.dcm", stored, center=1000, width=800)
    rle = dicom_files.write(tmp_path / "rle.dcm", stored, center=1000, width=800, compress=True)
    assert dicom.inspect(rle).raw is None  # compressed: read by pydicom
    np.testing.assert_array_equal(dicom.read_frame(rle), dicom.read_frame(plain))


def test_pydicoms_bundled_mr_slice():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("MR_small.dcm")
    if path is None:
        pytest.skip("pydicom ships without its MR_small.dcm test file")
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    assert dicom.inspect(path).frames == 1
    pixels = dicom.read_frame(path)
    # pydicom's own (float64) modality and VOI steps, whose output spans the stored range.
    ds = pydicom.dcmread(path)
    reference = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    if "WindowCenter" not in ds:
        reference = reference - reference.min()
        reference = reference / reference.max() * 255
    else:
        low = -(2 ** (ds.BitsStored - 1)) if ds.PixelRepresentation else 0
        reference = (reference - low) / (2 ** ds.BitsStored - 1) * 255
    assert pixels.shape == (64, 64)
    assert np.abs(pixels.astype(float) - reference).max() <= 1


def test_dicom_files_are_recognised_by_suffix_or_marker(tmp_path):
    good = dicom_files.write(tmp_path / "a.dcm", dicom_files.ramp())
    shutil.copy(good, tmp_path / "IM0001")
    shutil.copy(good, tmp_path / "1.2.840.113619.2.55")
    (tmp_path / "notes.txt").write_text("x" * 200)
    assert dicom.is_dicom_path(tmp_path / "IM0001")
    assert dicom.is_dicom_path(tmp_path / "1.2.840.113619.2.55")
    assert not dicom.is_dicom_path(tmp_path / "notes.txt")
    assert [p.name for p in kaggle_layout.list_images(tmp_path)] == [
        "1.2.840.113619.2.55", "IM0001", "a.dcm"]


def _tree(root: pathlib.Path, *, frames: int = 3) -> pathlib.Path:
    """A Kaggle tree of DICOMs: every kind of file the fast and the pydicom path read."""
    for split in ("Training", "Testing"):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            dicom_files.write(folder / "plain.dcm", dicom_files.ramp(top=1000 * (label + 1)),
                              slope=1, intercept=-1024, center=500, width=1000)
            dicom_files.write(folder / "IM0001", dicom_files.ramp(), photometric="MONOCHROME1")
    folder = root / "Training" / "glioma"
    dicom_files.write(folder / "minmax.dcm", dicom_files.ramp(top=3000), slope=-2, intercept=5)
    dicom_files.write(folder / "signed.dcm", (dicom_files.ramp().astype(np.int32) - 2000)
                      .astype(np.int16), bits_stored=16, extra={"PixelRepresentation": 1})
    dicom_files.write(folder / "rle.dcm", dicom_files.ramp(), compress=True, center=900,
                      width=700)
    dicom_files.write(folder / "rgb.dcm", np.full((32, 32, 3), (10, 200, 30), np.uint8))
    dicom_files.write(folder / "multi.dcm", np.stack(
        [dicom_files.ramp() // (i + 1) for i in range(frames)]), center=600, width=1200)
    return root


@pytest.mark.parametrize("window", [None, dicom.Window(300, 400)])
def test_the_pipeline_reads_every_frame_once_as_read_frame_gives_it(tmp_path, window):
    root = _tree(tmp_path)
    source = sources.load_folder_source(root, split="train", dicom_window=window)
    multi = [n for n in source.names if "multi.dcm" in n]
    assert sorted(multi) == ["Training/glioma/multi.dcm#1", "Training/glioma/multi.dcm#2",
                             "Training/glioma/multi.dcm#3"]
    assert source.num_examples == 4 * 2 + 4 + 3
    for (encoded, label), name in zip(source.dataset, source.names):
        path, frame = dicom.split_key(root / name)
        want = dicom.read_frame(path, frame, window=window)
        want = want if want.ndim == 3 else np.repeat(want[..., None], 3, axis=-1)
        np.testing.assert_array_equal(decoding.decode(encoded).numpy(), want, err_msg=name)
        # The pipeline's resize gives what the model's input contract gives for these pixels.
        np.testing.assert_array_equal(
            decoding.decode_and_resize(encoded, image_size=20).numpy(),
            decoding.resize(want, 20).numpy(), err_msg=name)
        assert CLASSES[int(label)] == pathlib.Path(name).parent.name
    other = sources.load_folder_source(root, split="train", dicom_window=dicom.Window(1, 2))
    assert other.cache_id != source.cache_id  # the window changes the pixels, so the caches


def test_bad_dicoms_are_skipped_and_named_like_any_bad_image(tmp_path, caplog):
    root = _tree(tmp_path, frames=2)
    bad = dicom_files.write_broken(root / "Training" / "notumor")
    (root / "Training" / "notumor" / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    with caplog.at_level(logging.WARNING):
        source = sources.load_folder_source(root, split="train")
    assert not any("notumor/" + p.name in n for p in bad.values() for n in source.names)
    log = caplog.text
    for path in bad.values():
        assert f"Skipping {str(path)!r}" in log
    assert "train: skipped 5 unusable image file(s)" in log
    reasons = {kind: images.check_files([path])[0].error for kind, path in bad.items()}
    assert "no pixel data" in reasons["no_pixels"]
    assert "no pixel data decoder" in reasons["unsupported"]
    assert "truncated" in reasons["truncated"]
    assert reasons["garbled"]
    for kind, path in bad.items():  # predict's reader refuses them the same way
        with pytest.raises(images.CorruptImageError):
            images.read_image(path)
    assert dicom_files.PATIENT_NAME not in log and dicom_files.PATIENT_ID not in log


def test_frames_are_read_by_key_and_a_missing_frame_is_refused(tmp_path):
    path = dicom_files.write(tmp_path / "m.dcm", np.stack([dicom_files.ramp(), dicom_files.ramp()
                                                           // 2]))
    assert dicom.split_key(f"{path}#2") == (path, 1)
    assert dicom.split_key(path) == (path, 0)
    second = images.read_image(f"{path}#2")
    assert decoding.decode(second.data).numpy()[0, -1, 0] == 255
    with pytest.raises(images.CorruptImageError, match="no frame 3"):
        images.read_image(f"{path}#3")


def test_parse_window():
    assert dicom.parse_window(" 40, 400") == dicom.Window(40, 400)
    for text in ("40", "40,abc", "40,0", "nan,400"):
        with pytest.raises(ValueError):
            dicom.parse_window(text)


def test_series_summary_takes_the_highest_mean_and_counts_votes():
    from mri_tfdata.evaluation import series

    names = ("a", "b")
    results = [{"file": "s1/1", "probabilities": {"a": 0.9, "b": 0.1}},
               {"file": "s1/2", "probabilities": {"a": 0.4, "b": 0.6}},
               {"file": "s1/3", "probabilities": {"a": 0.45, "b": 0.55}},
               {"file": "s2/1", "error": "damaged"},
               {"file": "s1/4", "error": "damaged"}]
    summaries = series.summarize(results, lambda f: f.split("/")[0], names)
    assert summaries[0]["series"] == "s1" and summaries[0]["class"] == "a"  # mean 0.583
    assert summaries[0]["votes"] == {"a": 1, "b": 2}
    assert summaries[0]["slices"] == 3 and summaries[0]["unreadable"] == 1
    assert summaries[1] == {"series": "s2", "slices": 0, "unreadable": 1, "class": None,
                            "votes": {"a": 0, "b": 0}}
    assert series.to_csv_rows(summaries, names)[0] == [
        "series", "slices", "unreadable", "class", "mean_a", "mean_b", "votes_a", "votes_b"]


def test_series_key_is_the_series_uid_else_the_folder(tmp_path):
    path = dicom_files.write(tmp_path / "s" / "a.dcm", dicom_files.ramp(), series_uid="1.2.3.4")
    assert dicom.series_key(path) == "1.2.3.4"
    assert dicom.series_key(f"{path}#1") == "1.2.3.4"
    (tmp_path / "s" / "b.jpg").write_bytes(b"x")
    assert dicom.series_key(tmp_path / "s" / "b.jpg") == str(tmp_path / "s")


def test_tfds_build_stores_pixels_and_names_never_header_values(tmp_path):
    import tensorflow_datasets as tfds

    import builders.brain_tumor_mri  # noqa: F401
    from builders.brain_tumor_mri import brain_tumor_mri_dataset_builder

    root = _tree(tmp_path / "manual", frames=2)
    dicom_files.write_broken(root / "Training" / "notumor")
    builder = brain_tumor_mri_dataset_builder.Builder(data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    assert builder.info.metadata["skipped_corrupt_files"]["train"] == 4
    got = {ex["filename"].decode(): ex for ex in tfds.as_numpy(
        builder.as_dataset(split="train", shuffle_files=False))}
    assert {"Training/glioma/multi.dcm#1", "Training/glioma/multi.dcm#2"} <= set(got)
    for name, example in got.items():
        path, frame = dicom.split_key(root / name)
        want = dicom.read_frame(path, frame)
        want = want if want.ndim == 3 else np.repeat(want[..., None], 3, axis=-1)
        np.testing.assert_array_equal(example["image"], want, err_msg=name)
    planted = [v.encode() for v in (dicom_files.PATIENT_NAME, dicom_files.PATIENT_ID,
                                    "Zyxwvutsrq")]
    records = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert records
    for record in records:
        data = record.read_bytes()
        assert not any(value in data for value in planted), record
