"""Temperature scaling and the calibrated cross-entropy: a proper score that label smoothing does
not bias.

Label smoothing trains a head to be less confident. That raises its plain cross-entropy on
held-out data without lowering its accuracy, so ranking heads by plain cross-entropy favours
unsmoothed, overconfident heads (on the real data it ranked the best-testing head, the default
with smoothing 0.1, last). Fitting one temperature T > 0 per head on its held-out predictions,
softmax(log p / T), removes any uniform over- or under-confidence before scoring; what remains is
how well the head separates the classes. `calibrated_cross_entropy` is the score the search's
trials (`val_calibrated_cross_entropy`) and its final selection rank by.
"""

import keras
import numpy as np
from scipy import optimize, special

# The temperatures searched (log-uniformly): far wider than any head's miscalibration, so the
# optimum is interior and the score does not depend on the bounds.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 1e2
# Tolerance on log T; the score is flat at its optimum, so its error is far smaller.
_LOG_T_TOLERANCE = 1e-6
# Probabilities that underflowed to 0 in float32 get the smallest positive float32 instead.
_TINY = float(np.finfo(np.float32).tiny)
METRIC_NAME = "calibrated_cross_entropy"


def _log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, np.float64), _TINY, None))


def _nll(log_p: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(log_p / temperature)."""
    scaled = log_p / temperature
    return float(np.mean(special.logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)),
                                                                    labels]))


def per_example_nll(probabilities: np.ndarray, labels: np.ndarray,
                    temperature: float) -> np.ndarray:
    """-log softmax(log p / temperature)[label] of each prediction [N]: the terms whose mean is
    the calibrated cross-entropy at that temperature."""
    scaled = _log_probabilities(probabilities) / temperature
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    return special.logsumexp(scaled, axis=1) - scaled[np.arange(len(labels)), labels]


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises the mean NLL of
    softmax(log p / T) on these predictions (T > 1 softens overconfident ones)."""
    log_p = _log_probabilities(probabilities)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    result = optimize.minimize_scalar(
        lambda log_t: _nll(log_p, labels, float(np.exp(log_t))), method="bounded",
        bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)),
        options={"xatol": _LOG_T_TOLERANCE})
    return float(np.exp(result.x))


def temperature_scaled(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(calibrated_cross_entropy, the fitted temperature) of the predictions."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if not len(labels):
        raise ValueError("calibrated_cross_entropy needs at least one prediction")
    temperature = fit_temperature(probabilities, labels)
    return _nll(_log_probabilities(probabilities), labels, temperature), temperature


def calibrated_cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean cross-entropy of the predictions after temperature scaling (fit_temperature).

    Args:
      probabilities: class probabilities [N, C] (rows of a softmax).
      labels: integer labels [N].

    Returns:
      min over T of mean(-log softmax(log p / T)[label]); for any fixed prediction set it is the
      same whatever temperature its logits were divided by (within the searched range).
    """
    return temperature_scaled(probabilities, labels)[0]


class CalibratedCrossEntropy(keras.callbacks.Callback):
    """Writes `val_calibrated_cross_entropy` (and `val_temperature`) into the epoch's logs.

    Keras passes one logs dict to every callback in list order, and appends its History (and
    progress bar) after the callbacks it is given. Put this callback before KerasTuner's own
    (TunerCallback, SaveBestEpoch), so that they, and the History, see the score.

    Args:
      features: the validation inputs (cached features).
      labels: their labels.
      batch_size: the inference batch.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, *, batch_size: int = 1024):
        super().__init__()
        self._features, self._labels = features, np.asarray(labels).reshape(-1)
        self._batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        # Called directly (not predict): no strategy pads the last batch, every example counts once.
        probabilities = np.concatenate([
            keras.ops.convert_to_numpy(
                self.model(self._features[i:i + self._batch_size], training=False))
            for i in range(0, len(self._features), self._batch_size)]).astype(np.float32)
        score, temperature = temperature_scaled(probabilities, self._labels)
        logs[f"val_{METRIC_NAME}"], logs["val_temperature"] = score, temperature
