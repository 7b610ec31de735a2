"""The search's data: the training and validation features, loaded once, with their sources."""

import dataclasses

import keras
import numpy as np
from absl import logging

from mri_tfdata.core.errors import UserError
from mri_tfdata.data.sources import Source
from mri_tfdata.model import architecture, feature_cache
from mri_tfdata.model.feature_cache import FeatureSet
from tuning import selection


@dataclasses.dataclass(frozen=True)
class SearchData:
    """The features the trials fit on and are scored on, and the splits they came from."""

    train: FeatureSet
    validation: FeatureSet
    sources: tuple[Source, Source]  # train's, validation's: content hashes group the folds

    def pooled(self) -> FeatureSet:
        """Both splits together, train's first: the final selection's cross-validation data."""
        return FeatureSet(np.concatenate([self.train.features, self.validation.features]),
                          np.concatenate([self.train.labels, self.validation.labels]), key=None,
                          path=None, from_cache=False)

    def content_groups(self) -> np.ndarray:
        """A group per distinct image content, in pooled() order (read only when called)."""
        return selection.content_groups([h for source in self.sources
                                         for h in source.content_hashes])


def load(data, model_spec, *, strategy, seed: int, feature_cache_setting: str, train_split: str,
         validation_split: str, largest_batch: int) -> SearchData:
    """Builds training's backbone and returns the two splits' features, cached on disk.

    Args:
      data: the DataSpec the splits are opened from.
      model_spec: the classifier's shape (image size and backbone weights).
      strategy: the tf.distribute strategy the backbone is built under.
      seed: the run's seed, set before the backbone is built, as training sets it.
      feature_cache_setting: "auto", "off" or a folder (`feature_cache.resolve_cache_dir`).
      train_split, validation_split: the splits the trials fit on and are scored on.
      largest_batch: the largest batch a trial may use.

    Raises:
      UserError: the training split is smaller than the largest batch.
    """
    # The seed first, as training does: with weights='none' the backbone's random weights (and so
    # the cache key and the features) are then those training on best.flags builds.
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        backbone = architecture.build_backbone(image_size=model_spec.image_size,
                                               weights=model_spec.weights)
    data.prepare()
    cache_dir = feature_cache.resolve_cache_dir(feature_cache_setting)
    sources = tuple(data.open(split) for split in (train_split, validation_split))
    # At the inference batch, not the head's.
    fingerprint = feature_cache.weights_fingerprint(backbone)
    train, validation = (feature_cache.load_or_extract(
        source, backbone=backbone, image_size=model_spec.image_size, cache_dir=cache_dir,
        strategy=strategy, fingerprint=fingerprint) for source in sources)
    if len(train.labels) < largest_batch:
        raise UserError(f"batch_sizes holds {largest_batch}, more than the {len(train.labels)} "
                        f"examples of train_split={train_split!r}; use smaller batch_sizes.")
    logging.info("Search data: %d training and %d validation feature vectors.",
                 len(train.labels), len(validation.labels))
    return SearchData(train=train, validation=validation, sources=sources)
