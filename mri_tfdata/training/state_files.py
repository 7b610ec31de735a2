"""Training state as checksummed npz files: model and optimizer variables, verified on load."""

import hashlib
import io
import pathlib

import keras
import numpy as np

from mri_tfdata.core import atomic

CHECKSUM_SUFFIX = ".sha256"


class DamagedState(ValueError):
    """A state file is missing, fails its checksum, or does not fit the model."""


def checksum_path(path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _state_variables(model: keras.Model, *, with_optimizer: bool) -> dict[str, list]:
    """The variables saved: every model variable (weights, statistics, dropout seed states) and,
    with_optimizer, the optimizer's (step count, which fixes the schedule's position; moments)."""
    groups = {"model": list(model.variables)}
    if with_optimizer and model.optimizer is not None:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        groups["optimizer"] = list(model.optimizer.variables)
    return groups


def save(model: keras.Model, path, *, with_optimizer: bool) -> pathlib.Path:
    """Writes the model's state to `path` (npz) and its sha256 beside it, each atomically.

    The checksum is written last, so a kill between the two leaves a file that is not trusted.

    Raises:
      atomic.DiskError: a file could not be written (full disk, read-only folder).
    """
    arrays = {f"{group}/{i:05d}": np.asarray(keras.ops.convert_to_numpy(v.value))
              for group, variables in _state_variables(model, with_optimizer=with_optimizer).items()
              for i, v in enumerate(variables)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    content = buffer.getvalue()
    path = pathlib.Path(path)
    checksum_path(path).unlink(missing_ok=True)
    atomic.write_atomic(path, content)
    atomic.write_atomic(checksum_path(path), hashlib.sha256(content).hexdigest() + "\n")
    return path


def verified_bytes(path) -> bytes:
    """The file's bytes once its sha256 matches the one written with it.

    Raises:
      DamagedState: the file or its checksum is missing or unreadable, or they disagree.
    """
    path = pathlib.Path(path)
    try:
        content = path.read_bytes()
        expected = checksum_path(path).read_text().strip()
    except OSError as e:
        raise DamagedState(f"cannot read it or its checksum ({e.strerror or e})") from None
    if hashlib.sha256(content).hexdigest() != expected:
        raise DamagedState("its sha256 differs from the one written with it")
    return content


def load(model: keras.Model, path, *, with_optimizer: bool) -> None:
    """Restores what `save` wrote into `model` (and its optimizer), after verifying the file.

    Nothing is assigned unless every array fits. Afterwards the model computes with the loaded
    state, derived tensors included (_refresh_derived_state), as after Keras's own loading.

    Raises:
      DamagedState: the file is damaged or does not fit the model.
    """
    content = verified_bytes(path)
    try:
        with np.load(io.BytesIO(content)) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, KeyError) as e:
        raise DamagedState(f"unreadable ({e})") from None
    pairs = []
    for group, variables in _state_variables(model, with_optimizer=with_optimizer).items():
        keys = sorted(k for k in arrays if k.startswith(group + "/"))
        if len(keys) != len(variables):
            raise DamagedState(
                f"it holds {len(keys)} {group} variables, the model {len(variables)}")
        for key, variable in zip(keys, variables):
            if tuple(arrays[key].shape) != tuple(variable.shape):
                raise DamagedState(f"{key} has shape {arrays[key].shape}, not {variable.shape}")
            pairs.append((variable, arrays[key]))
    for variable, value in pairs:
        variable.assign(value)
    _refresh_derived_state(model)


def _layers(layer: keras.layers.Layer):
    """`layer` and every layer nested in it, through nested models."""
    yield layer
    for sublayer in getattr(layer, "layers", ()):
        yield from _layers(sublayer)


def _refresh_derived_state(model: keras.Model) -> None:
    """Layers that compute from tensors derived from their variables rederive them.

    A Normalization layer computes with mean and variance tensors made from its variables when it
    is adapted or loaded by Keras (`finalize_state`), not from the variables themselves: assigned
    alone, the variables would be saved with the model while the layer in memory computed with
    the statistics it had before. Keras's own loading calls `finalize_state` after each layer's
    variables; so does this.
    """
    for layer in _layers(model):
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()


def remove(path) -> None:
    """Removes a state file and its checksum."""
    pathlib.Path(path).unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)
