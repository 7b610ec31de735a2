"""Grad-CAM: where in an image the classifier found the evidence for a class, drawn over it."""

import dataclasses
import pathlib

import keras
import numpy as np
import tensorflow as tf

from mri_tfdata.core import atomic
from mri_tfdata.core.errors import UserError
# reports owns the matplotlib set-up (the Agg backend) and the atomic PNG writer.
from mri_tfdata.evaluation.reports import plt, save_figure

# ResNet50's last convolutional block: the 2,048 maps (1/32 of the input side: 4 x 4 at 128 px,
# 7 x 7 at 224 px) that the average pooling turns into the head's features, so the finest maps
# the decision can be traced back to without passing through more convolutions.
CONV_LAYER = "conv5_block3_out"
# ResNet50 halves the resolution five times, each time keeping the top-left sample of a 2 x 2
# window (stride-2 convolutions and pooling on symmetric padding), so cell (i, j) of CONV_LAYER is
# centred on input pixel (32 i, 32 j), not on the middle of the i-th 32-pixel band: stretching the
# heatmap over the image would shift the evidence half a cell down and right.
STRIDE = 32


@dataclasses.dataclass
class GradCam:
    """Grad-CAM heatmaps of a batch of images, with the predictions they explain."""

    heatmaps: np.ndarray  # float32 [N, h, w] in [0, 1], at CONV_LAYER's resolution; 1 = the peak
    probabilities: np.ndarray  # float32 [N, C], the classifier's class probabilities
    classes: np.ndarray  # int [N]: the class each heatmap explains


def _not_ours(classifier, missing) -> UserError:
    return UserError(
        f"Grad-CAM cannot read the model {classifier.name!r}: it has no {missing}. It needs a "
        "classifier built by mri_tfdata (image -> backbone (preprocessing -> resnet50 -> "
        "features) -> head); pass the model.keras of an mri_tfdata training run.")


def _float32_logits(head: keras.Model) -> keras.Model:
    """A float32 copy of the head that ends at the logits: the same weights, no softmax.

    Grad-CAM differentiates the class score before the softmax, because the softmax saturates
    on confident predictions and its gradient vanishes with it. Every layer is rebuilt float32,
    so that under a mixed policy no gradient passes through float16 or bfloat16.
    """
    last = head.layers[-1]
    if not (isinstance(last, keras.layers.Dense) and last.get_config()["activation"] == "softmax"):
        raise _not_ours(head, "softmax Dense layer at the end of its head")

    def rebuild(layer):
        config = {**layer.get_config(), "dtype": "float32"}
        if layer is last:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(head, clone_function=rebuild)
    for layer in head.layers:
        copy = twin.get_layer(layer.name)
        copy.set_weights(layer.get_weights())
        # Normalization keeps the adapted statistics as tensors derived from its variables.
        if isinstance(copy, keras.layers.Normalization):
            copy.finalize_state()
    return twin


class Explainer:
    """Computes Grad-CAMs for one classifier; build it once, explain as many batches as needed.

    It cuts the classifier at CONV_LAYER, using the classifier's own layers (so its weights,
    frozen or fine-tuned): the preprocessing and ResNet50 up to CONV_LAYER give the maps under
    the model's policy; ResNet50's global average pooling (which pooling="avg" puts right after
    CONV_LAYER) and the head then finish the classifier's own forward pass, so the predictions
    explained are the classifier's. The gradients are taken on a float32 copy of the head.

    Raises:
      UserError: the model is not an mri_tfdata classifier.
    """

    def __init__(self, classifier: keras.Model):
        try:
            backbone = classifier.get_layer("backbone")
            resnet = backbone.get_layer("resnet50")
            conv = resnet.get_layer(CONV_LAYER)
            self._features = backbone.get_layer("features")
            self._head = classifier.get_layer("head")
        except ValueError as e:
            raise _not_ours(classifier, f"layer it needs ({e})") from None
        self._pool = resnet.layers[-1]
        if not (isinstance(self._pool, keras.layers.GlobalAveragePooling2D)
                and self._pool.input is conv.output):
            raise _not_ours(classifier, f"global average pooling right after {CONV_LAYER}")
        # The backbone's layers are in graph order: everything before ResNet50 is the
        # preprocessing, and the layer right before it produces ResNet50's input.
        position = backbone.layers.index(resnet)
        feeding = backbone.layers[max(position - 1, 0)].output
        if position < 1 or tuple(feeding.shape) != tuple(resnet.input.shape):
            raise _not_ours(classifier, "preprocessing in front of its ResNet50")
        self._preprocess = keras.Model(backbone.input, feeding)
        self._to_maps = keras.Model(resnet.input, conv.output)
        self._logits = _float32_logits(self._head)
        self.input_shape = tuple(classifier.input_shape[1:])
        self.num_classes = int(classifier.output_shape[-1])

    def _maps(self, images):
        return self._to_maps(self._preprocess(tf.cast(images, tf.float32)), training=False)

    def _probabilities(self, maps):
        return self._head(self._features(self._pool(maps)), training=False)

    def _logits_of(self, maps32):
        return self._logits(self._features(tf.reduce_mean(maps32, axis=(1, 2))), training=False)

    def explain(self, images, *, class_index=None, batch_size: int = 16) -> GradCam:
        """Computes Grad-CAM (Selvaraju et al., 2017) at CONV_LAYER for each image.

        For class c with logit y_c and the layer's maps A_k, the weight of map k is the spatial
        mean of dy_c/dA_k, and the heatmap is ReLU(sum_k weight_k A_k) divided by its maximum
        (all zeros when no location speaks for c). The maps come from the classifier under its
        own precision policy; from them on, logits, gradients, weights and heatmaps are float32.

        Args:
          images: uint8 [N, H, W, 3] at the classifier's input size, N >= 1.
          class_index: the class to explain: one int for every image, N ints (one per image),
            or None for each image's predicted class.
          batch_size: images per forward pass.

        Returns:
          A GradCam; its probabilities are the classifier's own.

        Raises:
          ValueError: no images, images of the wrong shape, or a class_index out of range.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.input_shape or not len(images):
            raise ValueError(f"images of shape {images.shape}; the classifier takes "
                             f"[N >= 1, *{self.input_shape}]")
        if class_index is not None:
            chosen_all = np.broadcast_to(np.asarray(class_index, np.int32), (len(images),))
            if not (0 <= chosen_all.min() and chosen_all.max() < self.num_classes):
                raise ValueError(f"class_index={class_index}; the classifier has "
                                 f"{self.num_classes} classes")
        heatmaps, probabilities, classes = [], [], []
        for start in range(0, len(images), batch_size):
            maps = self._maps(images[start:start + batch_size])
            p = tf.cast(self._probabilities(maps), tf.float32)
            chosen = (tf.argmax(p, axis=1, output_type=tf.int32) if class_index is None
                      else tf.constant(chosen_all[start:start + batch_size]))
            maps = tf.cast(maps, tf.float32)
            with tf.GradientTape() as tape:
                tape.watch(maps)
                # Each image's score depends on its own maps only, so one gradient of the sum
                # gives every image's gradient.
                score = tf.reduce_sum(tf.gather(self._logits_of(maps), chosen, axis=1,
                                                batch_dims=1))
            weights = tf.reduce_mean(tape.gradient(score, maps), axis=(1, 2))
            cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", maps, weights))
            heatmaps.append(tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2),
                                                                     keepdims=True)))
            probabilities.append(p)
            classes.append(chosen)
        return GradCam(heatmaps=np.concatenate(heatmaps).astype(np.float32),
                       probabilities=np.concatenate(probabilities).astype(np.float32),
                       classes=np.concatenate(classes).astype(np.int64))


def gradcam(classifier: keras.Model, images, *, class_index=None,
            batch_size: int = 16) -> GradCam:
    """Grad-CAMs of `images` for `classifier`, for a single use: Explainer(classifier).explain
    (see both for the arguments and errors)."""
    return Explainer(classifier).explain(images, class_index=class_index, batch_size=batch_size)


# What the colour of a heatmap means: each heatmap is divided by its own peak (explain's rule).
SCALE_LABEL = "Grad-CAM evidence for the class named\n(0 = none, 1 = the image's own peak)"


def no_evidence(heatmap: np.ndarray) -> bool:
    """True when no location speaks for the class: the map is zero everywhere after the ReLU."""
    return not np.any(np.asarray(heatmap) > 0)


def draw_overlay(ax, image: np.ndarray, heatmap: np.ndarray, title: str = "", *,
                 explained: str = "the class") -> None:
    """Draws the image with the heatmap over it (jet, half transparent), each cell where it looks.

    Cell (i, j) is drawn centred on pixel (STRIDE i, STRIDE j), smoothed bilinearly; beyond the
    last cells (the right and bottom half cell) the edge values continue. A heatmap with no
    positive evidence is not drawn (it would be a uniformly dark square): the panel says
    "no positive evidence for <explained>" over the image instead.
    """
    height, width = image.shape[:2]
    ax.imshow(image)
    if no_evidence(heatmap):
        ax.text(0.5, 0.5, f"no positive evidence\nfor {explained}", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="black",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    else:
        padded = np.pad(heatmap, ((0, 1), (0, 1)), mode="edge")
        # In imshow's coordinates pixel p is centred on p, and a cell spans STRIDE pixels.
        extent = (-STRIDE / 2, STRIDE * padded.shape[1] - STRIDE / 2,
                  STRIDE * padded.shape[0] - STRIDE / 2, -STRIDE / 2)
        ax.imshow(padded, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0, extent=extent,
                  interpolation="bilinear")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_title(title, fontsize=9)
    _frameless(ax)


def add_scale(fig, axes) -> None:
    """One colour bar beside `axes` for every heatmap drawn by draw_overlay (all share 0..1)."""
    import matplotlib.cm
    import matplotlib.colors

    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), cmap="jet")
    bar = fig.colorbar(scale, ax=axes, shrink=0.8, ticks=[0.0, 0.5, 1.0])
    bar.set_label(SCALE_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=8)


def _frameless(ax) -> None:
    # Not axis("off"): that would also hide the y label plot_grid names its rows with.
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _caption(result: GradCam, i: int, class_names) -> str:
    predicted = int(np.argmax(result.probabilities[i]))
    caption = f"predicted {class_names[predicted]} ({result.probabilities[i, predicted]:.3f})"
    explained = int(result.classes[i])
    if explained != predicted:
        caption += (f", Grad-CAM of {class_names[explained]} "
                    f"({result.probabilities[i, explained]:.3f})")
    return caption


def overlay_names(files) -> list[str]:
    """One PNG name per file: scan.jpg -> scan.png; another scan.* (other folder) -> scan-2.png.

    Names that differ only in case count as the same, for case-insensitive file systems.
    """
    names, taken = [], set()
    for file in files:
        stem = pathlib.Path(file).stem or "image"
        name, n = f"{stem}.png", 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}-{n}.png"
        taken.add(name.lower())
        names.append(name)
    return names


def write_overlay(path, image: np.ndarray, heatmap: np.ndarray, *, title: str,
                  explained: str = "the class") -> pathlib.Path:
    """Writes one PNG: the image as the model takes it, beside it the Grad-CAM over it, titled,
    with the heatmap's colour bar; `explained` is the class the heatmap explains.

    Raises:
      atomic.DiskError: the file cannot be written.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.4, 3.7), layout="constrained")
    left.imshow(image)
    left.set_title(f"input ({image.shape[1]} px)", fontsize=9)
    _frameless(left)
    draw_overlay(right, image, heatmap, f"Grad-CAM of {explained}", explained=explained)
    add_scale(fig, right)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def save_overlays(explainer: Explainer, images, *, files, out_paths, class_names,
                  class_index=None) -> list:
    """Explains `images` and writes one overlay PNG per image (write_overlay).

    Args:
      explainer: the classifier's Explainer.
      images: uint8 [N, H, W, 3], the images as the classifier takes them.
      files: N file names, for the titles.
      out_paths: N PNG paths (see overlay_names); their folders must exist.
      class_names: the classifier's classes, in label order.
      class_index: the class to explain (an int, or N ints); None for each predicted class.

    Returns:
      Per image, the Path written, or a str saying why no overlay was written (its heatmap is
      not finite, or its file cannot be written); the other images are still drawn.
    """
    result = explainer.explain(images, class_index=class_index)
    written = []
    for i, (file, path) in enumerate(zip(files, out_paths)):
        if not np.isfinite(result.heatmaps[i]).all():
            written.append("its Grad-CAM is not finite (the model overflowed on this image)")
            continue
        try:
            written.append(write_overlay(
                path, images[i], result.heatmaps[i],
                title=f"{pathlib.Path(file).name}: {_caption(result, i, class_names)}",
                explained=class_names[int(result.classes[i])]))
        except atomic.DiskError as e:
            written.append(str(e))
    return written


def plot_grid(path, rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray, str]]]]
              ) -> pathlib.Path:
    """Draws rows of Grad-CAM overlays into one PNG and returns its path.

    Args:
      path: the PNG to write.
      rows: (row label, [(image, heatmap, caption, explained class name), ...]) per row;
        empty rows are left out. One colour bar serves every panel (all share the 0..1 scale).
    """
    rows = [(label, panels) for label, panels in rows if panels]
    columns = max((len(panels) for _, panels in rows), default=1)
    # Constrained layout makes room for the three-line captions between the rows.
    fig, axes = plt.subplots(max(len(rows), 1), columns, squeeze=False, layout="constrained",
                             figsize=(2.6 * columns, 3.2 * max(len(rows), 1)))
    for ax in axes.ravel():
        ax.axis("off")
    for r, (label, panels) in enumerate(rows):
        for c, (image, heatmap, caption, explained) in enumerate(panels):
            axes[r, c].axis("on")
            draw_overlay(axes[r, c], image, heatmap, caption, explained=explained)
        axes[r, 0].set_ylabel(label, fontsize=11)
    add_scale(fig, axes)
    return save_figure(fig, path)
