"""Tests of the batch picture: the grid function and its command line."""

import os
import subprocess
import sys

import image_trees
import numpy as np
import pytest
from PIL import Image

from mri_tfdata import show_batch


def test_save_batch_grid_writes_a_png(tmp_path):
    images = np.zeros((6, 24, 24, 3), np.uint8)
    images[:, :, :, 0] = 255
    path = show_batch.save_batch_grid(images, [0, 1, 2, 3, 0, 1], image_trees.CLASS_NAMES,
                                      tmp_path / "sub" / "grid.png", columns=3, title="t")
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        width, height = picture.size
        pixels = np.asarray(picture.convert("RGB"))
    assert width > height > 100  # 3 columns by 2 rows.
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red.mean() > 0.1  # The images are drawn, not just the titles.


@pytest.mark.integration
def test_cli_writes_the_grid_and_never_overwrites(tmp_path):
    tree = image_trees.write_tree(tmp_path / "data", train_per_class=3, test_per_class=1)
    out = tmp_path / "batch.png"
    command = [sys.executable, "-m", "mri_tfdata.show_batch", "--source=folder",
               f"--data_dir={tree}", "--split=test", "--image_size=32", "--batch_size=4",
               "--seed=0", f"--out={out}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(out) as picture:
        assert picture.size[0] > 200
    before = out.read_bytes()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert again.returncode == 1 and "already exists" in " ".join(again.stderr.split())
    assert "Traceback" not in again.stderr and out.read_bytes() == before


def test_cli_names_the_flags_of_a_missing_tfds_build(tmp_path):
    command = [sys.executable, "-m", "mri_tfdata.show_batch", "--source=tfds",
               f"--tfds_data_dir={tmp_path}", f"--out={tmp_path / 'batch.png'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    error = " ".join(result.stderr.split())
    assert result.returncode == 1 and "Traceback" not in error, error[-3000:]
    assert f"is not built in {tmp_path}. Build it with `mri-build --config=default" in error
    assert ("or pass the --tfds_data_dir it was built into. Or read the Kaggle folder itself: "
            "--source=folder.") in error
