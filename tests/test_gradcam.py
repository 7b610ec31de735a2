"""Tests for mri_tfdata.evaluation.gradcam on the package's own classifier (small, weights=None)."""

import csv

import image_trees
import keras
import numpy as np
import pytest
import tensorflow as tf

from mri_tfdata.core.errors import UserError
from mri_tfdata.data import decoding, sources
from mri_tfdata.evaluation import evaluator, gradcam
from mri_tfdata.model import architecture, feature_cache

# 128 px gives ResNet50's last block a 4 x 4 map: the smallest size at which "where" means much.
SIZE, SIDE = 128, 48


def _squares(rng, count, *, square: bool):
    """Grey noise images, with a bright SIDE x SIDE square at a random place if `square`.

    The background is about ImageNet's mean grey, which the caffe preprocessing maps to about 0,
    like ResNet's zero padding: a random backbone then sees no frame around the image.
    """
    images = rng.integers(100, 140, (count, SIZE, SIZE, 1)).repeat(3, axis=-1).astype(np.uint8)
    corners = rng.integers(0, SIZE - SIDE + 1, (count, 2))
    if square:
        for image, (row, col) in zip(images, corners):
            image[row:row + SIDE, col:col + SIDE] = 230
    return images, corners


def _square_classifier():
    return architecture.build_classifier(architecture.build_backbone(image_size=SIZE, weights="none"),
                                  architecture.build_head(hidden_units=(16,), standardize=True,
                                                   num_classes=2))


@pytest.fixture(scope="module")
def square_finder(tmp_path_factory):
    """The weights of our classifier (random frozen ResNet50, trained head) telling squares from
    no squares, trained under float32."""
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    classifier = _square_classifier()
    backbone, head = classifier.get_layer("backbone"), classifier.get_layer("head")
    plain, _ = _squares(rng, 48, square=False)
    marked, _ = _squares(rng, 48, square=True)
    features = backbone.predict(np.concatenate([plain, marked]), batch_size=16, verbose=0)
    labels = np.repeat([0, 1], 48)
    architecture.adapt_standardization(head, features)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    head.fit(features, labels, epochs=60, batch_size=16, verbose=0)
    weights = tmp_path_factory.mktemp("squares") / "square_finder.weights.h5"
    classifier.save_weights(weights)
    return weights


def _load_square_finder(weights, policy="float32"):
    keras.mixed_precision.set_global_policy(policy)
    classifier = _square_classifier()
    classifier.load_weights(weights)
    return classifier


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_the_heatmap_peaks_on_the_square(policy, square_finder):
    classifier = _load_square_finder(square_finder, policy)
    images, corners = _squares(np.random.default_rng(1), 30, square=True)
    result = gradcam.gradcam(classifier, images)  # each image's predicted class
    assert np.mean(result.classes == 1) >= 0.9  # it sees the squares
    assert result.heatmaps.shape == (30, 4, 4) and result.heatmaps.dtype == np.float32
    hits = 0
    for heatmap, (row, col) in zip(result.heatmaps, corners):
        # The input pixel the hottest cell is centred on (see gradcam.STRIDE).
        peak_row, peak_col = gradcam.STRIDE * np.array(np.unravel_index(heatmap.argmax(), (4, 4)))
        hits += row <= peak_row < row + SIDE and col <= peak_col < col + SIDE
    # A peak at a random cell would fall in the square about 15 % of the time.
    assert hits >= 0.8 * len(images), f"the peak lay on the square in {hits} of {len(images)}"


@pytest.mark.integration
def test_the_class_to_explain_can_be_chosen(square_finder):
    classifier = _load_square_finder(square_finder)
    images, _ = _squares(np.random.default_rng(2), 3, square=True)
    chosen = gradcam.gradcam(classifier, images, class_index=0)
    assert (chosen.classes == 0).all()
    assert not np.allclose(chosen.heatmaps, gradcam.gradcam(classifier, images).heatmaps)
    per_image = gradcam.gradcam(classifier, images, class_index=[0, 1, 0])
    np.testing.assert_array_equal(per_image.classes, [0, 1, 0])
    np.testing.assert_allclose(per_image.heatmaps[0], chosen.heatmaps[0], atol=1e-6)
    with pytest.raises(ValueError, match="class_index=2"):
        gradcam.gradcam(classifier, images, class_index=2)


@pytest.mark.integration
def test_cells_are_centred_on_multiples_of_the_stride():
    # The overlay draws cell (i, j) on pixel (32 i, 32 j); check on the network that it looks there.
    keras.utils.set_random_seed(0)
    size = 96
    backbone = architecture.build_backbone(image_size=size, weights="none")
    resnet = backbone.get_layer("resnet50")
    to_maps = keras.Model(resnet.input, resnet.get_layer(gradcam.CONV_LAYER).output)
    # Preprocessed-like input (about zero-mean): the preprocessing is per pixel, so it moves
    # nothing.
    images = tf.constant(np.random.default_rng(0).uniform(-128, 128, (1, size, size, 3)),
                         tf.float32)
    for cell in [(1, 1), (1, 2), (2, 1)]:
        with tf.GradientTape() as tape:
            tape.watch(images)
            maps = to_maps(images)
            response = tf.reduce_sum(maps[0, cell[0], cell[1]] ** 2)
        sensitivity = tf.reduce_sum(tf.abs(tape.gradient(response, images)[0]), axis=-1).numpy()
        peak = np.array(np.unravel_index(sensitivity.argmax(), sensitivity.shape))
        assert np.abs(peak - gradcam.STRIDE * np.array(cell)).max() <= 4, (cell, peak)


def _small_classifier(size=64):
    return architecture.build_classifier(architecture.build_backbone(image_size=size, weights="none"),
                                  architecture.build_head(hidden_units=(8,), standardize=True))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A float32 64 px classifier's weights file, five images and their float32 Grad-CAMs."""
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(3)
    classifier = _small_classifier()
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 64, 64, 3)).astype(np.uint8)
    architecture.adapt_standardization(classifier.get_layer("head"),
                                classifier.get_layer("backbone").predict(images, verbose=0))
    weights = tmp_path_factory.mktemp("gradcam") / "reference.weights.h5"
    classifier.save_weights(weights)
    return weights, images, gradcam.gradcam(classifier, images, batch_size=2)


@pytest.mark.integration
@pytest.mark.parametrize("policy, fine_tuned", [
    ("float32", False), ("mixed_float16", False), ("mixed_bfloat16", False), ("float32", True),
    ("mixed_bfloat16", True)])
def test_the_cut_model_is_the_classifier_under_every_policy(policy, fine_tuned, reference):
    weights, images, expected = reference
    keras.mixed_precision.set_global_policy(policy)
    classifier = _small_classifier()
    classifier.load_weights(weights)
    if fine_tuned:
        frozen = gradcam.gradcam(classifier, images, batch_size=2)
        architecture.unfreeze_top_blocks(classifier, 1)
        conv = classifier.get_layer("backbone").get_layer("resnet50").get_layer(
            "conv5_block3_3_conv")
        conv.kernel.assign(conv.kernel * 1.5)  # as if fine-tuning had moved it
    result = gradcam.gradcam(classifier, images, batch_size=2)
    assert result.heatmaps.dtype == np.float32 and result.heatmaps.shape == (5, 2, 2)
    assert np.isfinite(result.heatmaps).all()
    assert result.heatmaps.min() >= 0 and np.allclose(result.heatmaps.max(axis=(1, 2)), 1)
    # The probabilities are the classifier's own, under its own policy and with its own (tuned)
    # weights; batched alike, as 16-bit kernels round differently for another batch size.
    direct = np.concatenate([keras.ops.convert_to_numpy(classifier(images[i:i + 2], training=False))
                             for i in range(0, len(images), 2)])
    np.testing.assert_allclose(result.probabilities, direct, atol=1e-5)
    # Without a class_index each image's predicted class is explained.
    np.testing.assert_array_equal(result.classes, result.probabilities.argmax(axis=1))
    if fine_tuned:
        # The fine-tuned weights are the ones explained.
        assert not np.allclose(result.heatmaps, frozen.heatmaps, atol=1e-3)
    elif policy == "float32":
        np.testing.assert_allclose(result.heatmaps, expected.heatmaps, atol=1e-5)
    # (Under 16-bit policies a random network's heatmaps can flip between near-equal cells; that
    # they still find the evidence is test_the_heatmap_peaks_on_the_square's check.)


def test_overlay_names_are_unique_even_without_case():
    assert gradcam.overlay_names(["a/scan.jpg", "b/scan.jpg", "c/Scan.JPG", "scan-2.png"]) == [
        "scan.png", "scan-2.png", "Scan-3.png", "scan-2-2.png"]


@pytest.mark.integration
def test_overlays_and_grid_are_written_and_a_failed_overlay_is_reported(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    explainer = gradcam.Explainer(_small_classifier())
    titles = []
    write_overlay = gradcam.write_overlay
    monkeypatch.setattr(gradcam, "write_overlay", lambda path, image, heatmap, *, title, **kw: (
        titles.append(title) or write_overlay(path, image, heatmap, title=title, **kw)))
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    files = ["a/scan.jpg", "b/scan.jpg", "other.png"]
    (tmp_path / "cams").mkdir()
    out_paths = [tmp_path / "cams" / "scan.png", tmp_path / "missing" / "scan-2.png",
                 tmp_path / "cams" / "other.png"]
    written = gradcam.save_overlays(explainer, images, files=files, out_paths=out_paths,
                                    class_names=("glioma", "meningioma", "notumor", "pituitary"))
    assert written[0] == out_paths[0] and written[2] == out_paths[2]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000
               for p in (out_paths[0], out_paths[2]))
    # The overlay that cannot be written is reported, naming its file; the others are drawn.
    assert isinstance(written[1], str) and "scan-2.png" in written[1]
    result = explainer.explain(images)
    # Each title names the file, the predicted class and its probability.
    names = ("glioma", "meningioma", "notumor", "pituitary")
    for title, file, p in zip(titles, files, result.probabilities):
        assert title == f"{file.split('/')[-1]}: predicted {names[p.argmax()]} ({p.max():.3f})"
    grid = gradcam.plot_grid(tmp_path / "grid.png", [
        ("correct", [(images[0], result.heatmaps[0], "one", "glioma")]),
        ("wrong", [(images[1], result.heatmaps[1], "two", "glioma"),
                   (images[2], result.heatmaps[2], "3", "notumor")]),
        ("empty", [])])
    assert grid.stat().st_size > 10_000


def _keep_figures(monkeypatch) -> list:
    """The figures gradcam saves from now on, still written but kept open for inspection."""
    figures = []

    def keep(fig, path):
        figures.append(fig)
        fig.savefig(path, format="png")
        return path
    monkeypatch.setattr(gradcam, "save_figure", keep)
    return figures


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def _colour_bars(fig):
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def test_a_heatmap_without_positive_evidence_says_so_and_every_figure_has_a_scale(
        tmp_path, monkeypatch):
    figures = _keep_figures(monkeypatch)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    evidence = np.array([[0.0, 0.3], [1.0, 0.1]], np.float32)
    nothing = np.zeros((2, 2), np.float32)
    gradcam.plot_grid(tmp_path / "grid.png", [
        ("correct", [(images[0], evidence, "a.jpg", "glioma")]),
        ("wrong", [(images[1], nothing, "b.jpg", "pituitary")])])
    gradcam.write_overlay(tmp_path / "one.png", images[1], nothing, title="b.jpg",
                          explained="meningioma")
    grid, single = figures
    panels = [ax for ax in grid.axes if ax not in _colour_bars(grid)]
    # The all-zero map says so in words, naming the class it explains; the other panel does not.
    assert [_texts(ax) for ax in panels] == [[], ["no positive evidence\nfor pituitary"]]
    assert "no positive evidence\nfor meningioma" in sum((_texts(ax) for ax in single.axes), [])
    # Only the image is drawn on the empty panel: no uniformly dark heatmap over it.
    assert [len(ax.images) for ax in panels] == [2, 1]
    # One shared colour bar (every heatmap is on the same 0..1 scale), saying what it means.
    for fig in (grid, single):
        [bar] = _colour_bars(fig)
        assert "own peak" in bar.get_ylabel() and bar.get_ylim() == (0.0, 1.0)
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    for fig in figures:
        gradcam.plt.close(fig)


def test_a_model_that_is_not_ours_is_refused_in_one_paragraph():
    inputs = keras.Input((32, 32, 3))
    other = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    with pytest.raises(UserError, match="needs a classifier built by mri_tfdata"):
        gradcam.gradcam(other, np.zeros((1, 32, 32, 3), np.uint8))


def _events(log_dir):
    """Every summary in log_dir: tag -> [(step, plugin, value tensor)], and the event files."""
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    found = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, value.metadata.plugin_data.plugin_name,
                     tf.make_ndarray(value.tensor)))
    return found, files


@pytest.mark.integration
def test_evaluation_writes_the_gradcam_grid_errors_and_tensorboard(tmp_path, monkeypatch):
    root = image_trees.write_tree(tmp_path / "data", train_per_class=2, test_per_class=3, size=64)
    train, source = (sources.load_folder_source(root, split=s) for s in ("train", "test"))
    train_pictures, pictures = (
        np.stack([decoding.decode_and_resize(encoded, image_size=64).numpy()
                  for encoded, _ in split.dataset]) for split in (train, source))
    keras.utils.set_random_seed(4)
    classifier = _small_classifier()
    head = classifier.get_layer("head")
    train_features = classifier.get_layer("backbone").predict(train_pictures, verbose=0)
    architecture.adapt_standardization(head, train_features)
    # Trained with notumor and pituitary swapped: those test images become confident mistakes.
    head.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    head.fit(train_features, np.array([0, 1, 3, 2])[train.labels], epochs=40, verbose=0)
    drawn = []
    plot_grid = gradcam.plot_grid
    monkeypatch.setattr(gradcam, "plot_grid", lambda path, rows: drawn.append(rows)
                        or plot_grid(path, rows))
    out = tmp_path / "out"
    out.mkdir()
    for _ in range(2):  # the second evaluation replaces the first one's summaries
        metrics = evaluator.evaluate_split(classifier, source, out_dir=out, batch_size=4,
                                            cache_dir=None, log_dir=out / "logs", log_step=3)

    labels = source.labels
    probabilities = classifier.predict(pictures, verbose=0)
    predictions = probabilities.argmax(axis=1)
    right = predictions == labels
    assert 0 < right.sum() < len(labels)  # the seed gives both rows something to show
    assert metrics["accuracy"] == pytest.approx(right.mean())

    # errors.csv lists exactly the misclassified files.
    with open(out / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["file"] for r in rows) == sorted(source.names[i] for i in np.flatnonzero(~right))

    # The grid: the first correct image of each class, then the most confident mistakes, each with
    # the Grad-CAM of its predicted class.
    correct = [int(np.flatnonzero(right & (labels == c))[0]) for c in range(4)
               if (right & (labels == c)).any()]
    wrong = np.flatnonzero(~right)
    wrong = wrong[np.argsort(-probabilities[wrong].max(axis=1), kind="stable")][:4].tolist()
    assert [label for label, _ in drawn[-1]] == ["correct", "wrong"]
    correct_row, wrong_row = (panels for _, panels in drawn[-1])
    ids = image_trees.ids_from_pixels(pictures)
    for picked, panels in ((correct, correct_row), (wrong, wrong_row)):
        assert list(image_trees.ids_from_pixels([p[0] for p in panels])) == list(ids[picked])
        expected = gradcam.gradcam(classifier, pictures[picked], class_index=predictions[picked])
        np.testing.assert_allclose(np.stack([p[1] for p in panels]), expected.heatmaps, atol=1e-5)
        for i, (_, _, caption, explained) in zip(picked, panels):
            assert f"predicted {source.class_names[predictions[i]]}" in caption
            assert explained == source.class_names[predictions[i]]
    for plot in evaluator.PLOTS:
        assert (out / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{plot}.png").stat().st_size > 10_000

    # TensorBoard: the plots as images and the metrics as scalars, once each, at the step given.
    found, files = _events(out / "logs")
    assert len(files) == 1
    for tag in evaluator.PLOTS:
        [(step, plugin, image)] = found[tag]
        assert (step, plugin) == (3, "images") and image[2][:4] == b"\x89PNG"
    for tag in ("epoch_accuracy", "epoch_loss", "roc_auc/macro", "roc_auc/glioma",
                "sensitivity/notumor", "specificity/pituitary",
                "calibration/expected_calibration_error", "calibration/brier_score"):
        assert [(step, plugin) for step, plugin, _ in found[tag]] == [(3, "scalars")]
    assert float(found["epoch_accuracy"][0][2]) == pytest.approx(metrics["accuracy"])

    # Features that are not this model's on these images (here: another image's each) are
    # refused by the pass that draws the Grad-CAMs, before any report is written.
    features = classifier.get_layer("backbone").predict(pictures, verbose=0)
    foreign = feature_cache.FeatureSet(features=np.ascontiguousarray(features[::-1]),
                                       labels=labels, key=None, path=None, from_cache=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(UserError, match=r"predictions on 8 images of .* differ by .* Delete the"):
        evaluator.evaluate_split(classifier, source, out_dir=elsewhere, batch_size=4,
                                 cache_dir=None, feature_set=foreign)
    assert list(elsewhere.iterdir()) == []
