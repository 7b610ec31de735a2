"""The training loss: cross-entropy on integer labels, with optional label smoothing."""

import keras


@keras.saving.register_keras_serializable(package="mri_tfdata")
class SparseCrossEntropy(keras.losses.Loss):
    """Categorical cross-entropy of probabilities against integer labels, with label smoothing.

    Keras 3's SparseCategoricalCrossentropy has no label_smoothing, so the labels are one-hot
    encoded here and smoothed as CategoricalCrossentropy smooths them: the target of the true
    class is 1 - s + s / C and of every other class s / C. With s = 0 this is exactly the sparse
    cross-entropy. Registered, so saved models load in safe mode.

    Args:
      label_smoothing: s in [0, 1).
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_cross_entropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        num_classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        targets = keras.ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(targets, y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
