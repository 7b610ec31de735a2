"""Fast tests of mri_tfdata.serving.model_file without a model: image reading and refusals.

The round trip of a real classifier is in test_export.py and test_evaluate_predict.py.
"""

import zipfile

import image_trees
import numpy as np
import pytest

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import images
from mri_tfdata.serving import model_file


def test_load_image_resizes_to_a_uint8_rgb_square_and_refuses_what_is_not_an_image(tmp_path):
    tree = image_trees.write_tree(tmp_path, train_per_class=0, test_per_class=1, size=48)
    image = model_file.load_image(sorted((tree / "Testing").rglob("*.png"))[0], image_size=32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image_trees.labels_from_pixels(image[None]).tolist() == [0]  # glioma's colour kept
    grey16 = image_trees.write(tmp_path / "grey16.png", image_trees.gray16_png(65535))
    assert model_file.load_image(grey16, image_size=16).min() == 255  # scaled to 8 bits
    with pytest.raises(images.CorruptImageError):
        model_file.load_image(image_trees.write(tmp_path / "x.jpg", b"not an image"),
                              image_size=32)


def test_load_classifier_refuses_files_that_are_not_our_models(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        model_file.load_classifier(tmp_path / "missing.keras")
    not_zip = tmp_path / "text.keras"
    not_zip.write_text("hello")
    with pytest.raises(UserError, match=str(not_zip)):
        model_file.load_classifier(not_zip)
    no_metadata = tmp_path / "plain.keras"
    with zipfile.ZipFile(no_metadata, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(UserError, match=str(no_metadata)):
        model_file.load_classifier(no_metadata)
