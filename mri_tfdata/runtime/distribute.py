"""Picks the tf.distribute strategy (one device, mirrored, multi-worker, TPU) for a run."""

import json
import os
import pathlib

import tensorflow as tf

from mri_tfdata.core.choices import STRATEGIES
from mri_tfdata.core.errors import ParameterError, UserError


_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\' on the first machine and the same with '
    '"index": 1 on the second'
)


def _check_tf_config() -> None:
    """Fails early, with an example, when TF_CONFIG cannot describe a multi-worker cluster."""
    raw = os.environ.get("TF_CONFIG")
    fix = f"Set it on every worker before starting the run, e.g. {_TF_CONFIG_EXAMPLE}."
    if not raw:
        raise UserError("{strategy} needs the TF_CONFIG environment variable. {fix!s}",
                        strategy="multi_worker", fix=fix)
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        members = [m for job in cluster.values() for m in job]
        index = task["index"]
        if not (isinstance(index, int) and 0 <= index < len(cluster[task["type"]])):
            raise ValueError(f"task index {index!r} is not a position in its job's list")
        if not all(isinstance(m, str) and ":" in m for m in members):
            raise ValueError("cluster members must be 'host:port' strings")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"TF_CONFIG is malformed ({type(e).__name__}: {e}); it must be JSON with a 'cluster' "
            "mapping job names to lists of host:port and a 'task' whose 'type' is one of those "
            f"jobs and whose 'index' is a position in its list. {fix}"
        ) from None


class _KerasReduce:
    """Makes a mirrored strategy's `reduce` work the way Keras 3's `fit` and `evaluate` call it.

    Keras 3 (up to at least 3.15) calls `reduce` in ways the strategies cannot serve:

    - To build a model it reduces the first batch of data (MEAN, axis=None), only to learn its
      shapes (`trainer._maybe_symbolic_build`). When that batch is smaller than the global batch
      (a validation split smaller than one batch), the replicas hold different numbers of
      examples and the element-wise mean fails ("Inputs to operation AddN ... must have the
      same size and shape"). Any replica's value has the shapes Keras needs, so a non-scalar
      value reduced with axis=None is answered with this process's first replica's value.
    - Under MultiWorkerMirroredStrategy (keras-team/keras#20585, tensorflow#72388) it reduces a
      whole (images, labels) structure at once, which the collective implementation cannot
      take, and scalar losses and metrics with axis=0 ("Invalid reduction dimension 0").
      Reducing each value on its own, over replicas only for scalars, is what both calls mean.
    """

    def reduce(self, reduce_op, value, axis=None):
        parent = super()

        def reduce_one(v):
            first = self.experimental_local_results(v)[0]
            if first.shape.rank == 0:
                return parent.reduce(reduce_op, v, axis=None)
            if axis is None:
                return first
            return parent.reduce(reduce_op, v, axis=axis)

        return tf.nest.map_structure(reduce_one, value)


class _MirroredStrategy(_KerasReduce, tf.distribute.MirroredStrategy):
    """MirroredStrategy that Keras 3 can fit and evaluate with a partial first batch."""


class _MultiWorkerMirroredStrategy(_KerasReduce, tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy that Keras 3 can fit and evaluate."""


def _tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise UserError(
            "{strategy} found no usable TPU ({reason!s}). Run on a Cloud TPU VM (pass "
            "{tpu:'local'}), name the TPU with {tpu:NAME} or set TPU_NAME, or choose another "
            "{strategy!n} such as 'auto'.", strategy="tpu", reason=e) from None
    return tf.distribute.TPUStrategy(resolver)


def create_strategy(strategy: str, *, tpu: str | None = None) -> tf.distribute.Strategy:
    """Creates the distribution strategy; call it first, before any other TensorFlow work.

    `auto` uses MirroredStrategy over all GPUs when there are several, OneDeviceStrategy on a
    single GPU and the default (no-op) strategy on a CPU-only host. `mirrored` without GPUs
    mirrors over the logical CPU devices, so a host configured with two logical CPUs runs two
    replicas. `multi_worker` reads the cluster from TF_CONFIG; `tpu` connects to the TPU named
    by `tpu` (or found from the environment).

    Args:
      strategy: one of STRATEGIES.
      tpu: TPU name or address for the `tpu` strategy ("local" on a TPU VM).

    Returns:
      The tf.distribute.Strategy; build and compile the model inside its `scope()`.

    Raises:
      ParameterError: for a strategy not in STRATEGIES.
      UserError: when TF_CONFIG is missing or malformed, or no TPU can be reached.
    """
    if strategy not in STRATEGIES:
        raise ParameterError("{strategy} is not a strategy. Use one of: {accepted!s}.",
                             strategy=strategy, accepted=", ".join(STRATEGIES))
    if strategy == "multi_worker":
        _check_tf_config()
        # Collective ops must be configured before anything else touches the TF runtime.
        return _MultiWorkerMirroredStrategy()
    if strategy == "tpu":
        return _tpu_strategy(tpu)
    gpus = tf.config.list_logical_devices("GPU")
    if strategy == "auto":
        strategy = "mirrored" if len(gpus) > 1 else "one_device" if gpus else "default"
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    devices = gpus or tf.config.list_logical_devices("CPU")
    return _MirroredStrategy([d.name for d in devices])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def output_dir(workdir, strategy: tf.distribute.Strategy) -> pathlib.Path:
    """Where this process writes: the workdir for the chief, WORKDIR/worker-N for the others.

    Only the chief writes the outputs; the other workers keep their (identical) state in a
    scratch folder inside the workdir, as Keras recommends for multi-worker saving.
    """
    if is_chief(strategy):
        return pathlib.Path(workdir)
    return pathlib.Path(workdir) / f"worker-{strategy.cluster_resolver.task_id}"


def describe_strategy(strategy: tf.distribute.Strategy) -> str:
    """Returns one line for the start-up log: strategy kind, replicas, devices and cluster task."""
    try:
        devices = ", ".join(strategy.extended.worker_devices)
    except RuntimeError:  # The default strategy has no device list: it runs where TF places ops.
        devices = "TensorFlow's default placement"
    kind = type(strategy).__name__.lstrip("_")
    text = f"{kind} with {strategy.num_replicas_in_sync} replica(s) in sync on {devices}"
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        workers = len(resolver.cluster_spec().as_dict().get("worker", []))
        text += f"; this is {resolver.task_type} {resolver.task_id} of {workers} worker(s)"
    return text
