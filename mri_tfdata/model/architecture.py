"""The classifier: a frozen ResNet50 feature extractor (backbone) and a small dense head."""

import dataclasses
import os

import keras
import numpy as np
from absl import logging

from mri_tfdata.core.errors import UserError

FEATURE_DIM = 2048  # Width of ResNet50's average-pooled output.
# The file Keras downloads for weights="imagenet"; users offline can copy it and pass its path.
WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The classifier's shape (see build_backbone / build_head / build_classifier)."""

    image_size: int = 224  # side of the square uint8 input
    weights: str = "imagenet"  # imagenet | none | path of a ResNet50 no-top .h5
    head_units: tuple[int, ...] = (512, 128)  # hidden Dense sizes
    head_activation: str = "relu"
    dropout: float = 0.0
    standardize_features: bool = True  # Normalization of the 2,048 pooled features
    augment: bool = False  # random flip/rotation/zoom/contrast while training


# resnet50.preprocess_input's "caffe" means, in its BGR channel order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def caffe_preprocess(images):
    """`resnet50.preprocess_input` from built-in layers: RGB to BGR, minus the BGR means.

    Built-in layers, unlike a custom one, let a saved model load with nothing but Keras (safe
    mode, no registered class). The result is bitwise equal to preprocess_input: the flip is pure
    data movement and the mean is one float32 add, as there. Every layer is float32, because under
    a mixed policy a bfloat16 mean subtraction loses about one grey level. No weights: the
    backbone's weight list, and so the feature cache's fingerprint, is that of ResNet50 alone.

    Args:
      images: a Keras tensor [N, H, W, 3] with values 0-255 (uint8 or float).

    Returns:
      float32 [N, H, W, 3], BGR, mean-subtracted.
    """
    f32 = dict(dtype="float32")
    x = keras.layers.Rescaling(1.0, offset=[-m for m in CAFFE_MEAN_BGR[::-1]],
                               name="caffe_mean", **f32)(images)
    x = keras.layers.Permute((3, 1, 2), name="to_channels_first", **f32)(x)
    # Cropping2D crops axes 1 and 2 of a 4-D tensor; axis 1 now holds the colour channels.
    b, g, r = (keras.layers.Cropping2D((crop, (0, 0)), data_format="channels_last",
                                       name=f"take_{c}", **f32)(x)
               for c, crop in (("b", (2, 0)), ("g", (1, 1)), ("r", (0, 2))))
    x = keras.layers.Concatenate(axis=1, name="bgr", **f32)([b, g, r])
    return keras.layers.Permute((2, 3, 1), name="to_channels_last", **f32)(x)


def _resnet50(shape: tuple, weights: str) -> keras.Model:
    """Keras's ResNet50 without its top, average-pooled; weights "imagenet", "none" or a path."""
    if weights.lower() == "none":
        weights = None
    elif weights.lower() == "imagenet":
        weights = "imagenet"
    elif not os.path.isfile(os.path.expanduser(weights)):
        raise UserError(
            f"weights={weights!r} is neither 'imagenet', 'none' nor an existing file. Pass the "
            f"path of a ResNet50 no-top weights file ({WEIGHTS_FILE}), 'imagenet' or 'none'.")
    else:
        weights = os.path.expanduser(weights)
    try:
        return keras.applications.ResNet50(include_top=False, pooling="avg", weights=weights,
                                           input_shape=shape)
    # Keras's download turns URL errors into bare Exceptions; a bad file gives OSError/ValueError.
    except Exception as e:  # noqa: BLE001
        if weights == "imagenet":
            raise UserError(
                f"Cannot get the ImageNet ResNet50 weights: {WEIGHTS_FILE} is not in the Keras "
                f"cache (~/.keras/models, or $KERAS_HOME/models) and the download failed ({e}). "
                "Copy the file from a machine that has it and pass "
                f"weights='/path/to/{WEIGHTS_FILE}', or run with weights='none' (random "
                "initialisation; standardise the features for usable accuracy).") from None
        raise UserError(
            f"Cannot load ResNet50 weights from {weights} ({e}). The file must be Keras's "
            f"{WEIGHTS_FILE} (ResNet50 without top, HDF5); pass weights='imagenet' to fetch it, "
            "or weights='none'.") from None


def build_backbone(*, image_size: int, weights: str) -> keras.Model:
    """Builds the frozen feature extractor: images [H, W, 3] with values 0-255 -> features [2048].

    The model casts and preprocesses inside (so data stays uint8 up to the accelerator) and runs
    ResNet50 without its top, average-pooled, frozen and with training=False. Its input is
    declared float32 so that augmented (float) images pass in unrounded; uint8 batches are cast
    exactly. Its output is float32 under every precision policy, so cached features and the
    end-to-end path feed the head the same numbers.

    Args:
      image_size: height and width of the square input images, at least 32.
      weights: "imagenet" (Keras's download, cached in ~/.keras/models), "none" (random), or the
        path of a ResNet50 no-top .h5 file.

    Returns:
      A keras.Model named "backbone" with no trainable weights.

    Raises:
      UserError: when the weights cannot be found or do not fit ResNet50.
    """
    shape = (image_size, image_size, 3)
    images = keras.Input(shape, dtype="float32", name="image")
    x = caffe_preprocess(images)
    resnet = _resnet50(shape, weights)
    resnet.trainable = False
    # training=False documents intent; what keeps BatchNorm in inference mode even when the outer
    # model is called with training=True is Keras 3's rule that a frozen BN layer never updates.
    x = resnet(x, training=False)
    # A float32 linear activation is the usual Keras way to end a mixed-precision model in float32.
    features = keras.layers.Activation("linear", dtype="float32", name="features")(x)
    backbone = keras.Model(images, features, name="backbone")
    backbone.trainable = False
    logging.info("Backbone: ResNet50 at %d px, weights=%s.", image_size, weights)
    return backbone


def build_head(
    *,
    hidden_units: tuple[int, ...] = (512, 128),
    activation: str = "relu",
    dropout: float = 0.0,
    standardize: bool = False,
    num_classes: int = 4,
) -> keras.Model:
    """Builds the trainable head: pooled features [2048] -> float32 class probabilities.

    Args:
      hidden_units: sizes of the hidden Dense layers, in order.
      activation: Keras activation name for the hidden layers.
      dropout: dropout rate after each hidden layer; 0 for none.
      standardize: start with a Normalization layer; call adapt_standardization before training.
        Features of a randomly initialised backbone differ in scale by orders of magnitude, and
        standardising them is what makes such a backbone usable.
      num_classes: number of output classes.

    Returns:
      A keras.Model named "head".
    """
    features = keras.Input((FEATURE_DIM,), name="features")
    x = features
    if standardize:
        # float32: the per-feature statistics span a wide range; cheap at 2,048 values.
        x = keras.layers.Normalization(axis=-1, dtype="float32", name="standardize")(x)
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation=activation, name=f"dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    # float32 softmax: float16/bfloat16 probabilities saturate and make the loss unstable.
    probabilities = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(features, probabilities, name="head")


def adapt_standardization(head: keras.Model, features) -> bool:
    """Fits the head's Normalization layer (if it has one) to training features.

    Args:
      head: a model from build_head.
      features: a float array [N, 2048] or a tf.data.Dataset of feature batches (no labels).

    Returns:
      True if the head standardises its input and was adapted, False if it has no such layer.
    """
    try:
        layer = head.get_layer("standardize")
    except ValueError:
        return False
    if hasattr(features, "shape"):  # an array (a dataset has no shape)
        mean, variance = _moments(features)
        layer.adapt_mean.assign(mean.astype(np.float32))
        layer.adapt_variance.assign(variance.astype(np.float32))
    else:
        layer.adapt(features)
    # A randomly initialised backbone has pooled features that are (almost) constant over the
    # training images; dividing by their ~0 spread turns float noise on new images into inputs
    # of 1e3-1e6 and the head's loss explodes. A floor of 1e-3 of the median variance keeps
    # those dead features near zero without touching the informative ones.
    variance = np.asarray(layer.adapt_variance.numpy())
    floor = 1e-3 * float(np.median(variance))
    layer.adapt_variance.assign(np.maximum(variance, floor))
    layer.finalize_state()
    return True


def _moments(features, rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and (population) variance of [N, D] features, in float64, a block of
    rows at a time: the features are the run's largest array, and a whole-array variance holds
    a second copy of it."""
    features = np.asarray(features)
    count = max(len(features), 1)
    mean = np.zeros(features.shape[1:], np.float64)
    for start in range(0, len(features), rows):
        mean += features[start:start + rows].sum(axis=0, dtype=np.float64)
    mean /= count
    squares = np.zeros_like(mean)
    for start in range(0, len(features), rows):
        squares += np.square(features[start:start + rows] - mean).sum(axis=0)
    return mean, squares / count


def _augmentation() -> keras.Sequential:
    # float32 layers: interpolating 0-255 images in bfloat16 would round them; the layers are
    # identities outside training.
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", dtype="float32"),
            keras.layers.RandomRotation(0.05, dtype="float32"),  # +-18 degrees
            keras.layers.RandomZoom(0.1, dtype="float32"),
            keras.layers.RandomContrast(0.1, dtype="float32"),
        ],
        name="augment",
    )


def build_classifier(
    backbone: keras.Model, head: keras.Model, *, augment: bool = False
) -> keras.Model:
    """Chains backbone and head into the full model: uint8 images -> class probabilities.

    Args:
      backbone: from build_backbone.
      head: from build_head (possibly trained on cached features).
      augment: random flip, rotation, zoom and contrast inside the model, active only in training.

    Returns:
      A keras.Model named "classifier" whose input is uint8 [H, W, 3]. Keras's random layers
      default to training mode when a model is called directly, so with augment=True call it as
      `model(x, training=False)` or use `predict`/`evaluate`/the serving export, which do.
    """
    images = keras.Input(backbone.input.shape[1:], dtype="uint8", name="image")
    x = _augmentation()(images) if augment else images
    return keras.Model(images, head(backbone(x)), name="classifier")


def build_from_spec(spec: ModelSpec, *, num_classes: int) -> keras.Model:
    """Builds the whole classifier a ModelSpec describes (call inside the strategy's scope)."""
    backbone = build_backbone(image_size=spec.image_size, weights=spec.weights)
    head = build_head(hidden_units=spec.head_units, activation=spec.head_activation,
                      dropout=spec.dropout, standardize=spec.standardize_features,
                      num_classes=num_classes)
    return build_classifier(backbone, head, augment=spec.augment)


def _resnet_blocks(resnet: keras.Model) -> list[str]:
    """Names of the residual blocks ("conv2_block1" ... "conv5_block3") from input to output."""
    blocks = []
    for layer in resnet.layers:
        stage, _, rest = layer.name.partition("_")
        block = f"{stage}_{rest.split('_')[0]}"
        if rest.startswith("block") and block not in blocks:
            blocks.append(block)
    return blocks


def unfreeze_top_blocks(classifier: keras.Model, num_blocks: int) -> list[str]:
    """Makes the top `num_blocks` ResNet50 residual blocks trainable for fine-tuning.

    BatchNormalization layers stay frozen, which in Keras 3 also keeps them in inference mode:
    their moving statistics neither update nor get replaced by small-batch statistics. Recompile
    afterwards (compile_model), with a learning rate well below the head's.

    Args:
      classifier: from build_classifier.
      num_blocks: how many blocks to unfreeze, from conv5_block3 downwards (ResNet50 has 16).

    Returns:
      The names of the unfrozen blocks, top first.

    Raises:
      UserError: if num_blocks is negative or larger than the number of blocks.
    """
    resnet = classifier.get_layer("backbone").get_layer("resnet50")
    blocks = _resnet_blocks(resnet)
    if not 0 <= num_blocks <= len(blocks):
        raise UserError(
            f"Cannot unfreeze {num_blocks} blocks: ResNet50 has {len(blocks)}. Pass a number "
            f"from 0 to {len(blocks)}."
        )
    chosen = blocks[len(blocks) - num_blocks :][::-1]
    prefixes = tuple(f"{b}_" for b in chosen)
    backbone = classifier.get_layer("backbone")
    # Setting trainable on a model sets it on every nested layer, so open the path first and
    # then choose layer by layer.
    backbone.trainable = bool(chosen)
    for layer in resnet.layers:
        layer.trainable = layer.name.startswith(prefixes) and not isinstance(
            layer, keras.layers.BatchNormalization
        )
    logging.info("Fine-tuning ResNet50 blocks: %s (BatchNorm frozen).", ", ".join(chosen) or "none")
    return chosen
