"""Chooses and sets the Keras mixed-precision policy for the hardware at hand."""

import pathlib

import keras
import tensorflow as tf
from absl import logging

from mri_tfdata.core.choices import PRECISIONS
from mri_tfdata.core.errors import ParameterError


# CPU flags (Linux /proc/cpuinfo) that mean oneDNN runs bfloat16 matmuls and convolutions natively:
# x86 AVX512-BF16 / AMX-BF16, and the Armv8.6 BF16 extension. Without them bf16 is emulated and
# slower than float32.
_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpu_flags(cpuinfo: pathlib.Path = pathlib.Path("/proc/cpuinfo")) -> set[str]:
    """Returns the CPU feature flags of the first processor, or an empty set off Linux."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        # x86 calls the line "flags", arm64 calls it "Features".
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _all_gpus_have_tensor_cores() -> bool:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False
    details = [tf.config.experimental.get_device_details(g) for g in gpus]
    capabilities = [d.get("compute_capability") for d in details]
    # float16 pays off from Volta (7.0) on; below that it is emulated or slower than float32.
    return all(c is not None and tuple(c) >= (7, 0) for c in capabilities)


def resolve_precision(precision: str) -> str:
    """Turns a precision setting (one of PRECISIONS) into a Keras dtype-policy name.

    `auto` picks mixed_float16 when every GPU has compute capability >= 7.0, mixed_bfloat16 on TPUs
    and on CPUs with native bfloat16 (AVX512-BF16, AMX or Arm BF16), and float32 otherwise. TPUs are
    only visible once the TPU system is initialised, so create the strategy first.

    Args:
      precision: one of PRECISIONS.

    Returns:
      "float32", "mixed_float16" or "mixed_bfloat16".

    Raises:
      ParameterError: for a precision not in PRECISIONS.
    """
    if precision not in PRECISIONS:
        raise ParameterError(
            "{precision} is not a precision policy. Use one of: {accepted!s} (auto picks the "
            "fastest one this hardware runs natively).",
            precision=precision, accepted=", ".join(PRECISIONS))
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16" if _all_gpus_have_tensor_cores() else "float32"
    if tf.config.list_logical_devices("TPU"):
        return "mixed_bfloat16"
    if _cpu_flags() & _CPU_BF16_FLAGS:
        return "mixed_bfloat16"
    return "float32"


def apply_precision(precision: str) -> str:
    """Sets the global Keras dtype policy; call once, before any model or layer is built.

    Layers take the global policy when they are created, so a model built earlier keeps its
    policy. Under mixed_float16, `Model.compile` wraps the optimizer in a LossScaleOptimizer
    (dynamic loss scaling) by itself; bfloat16 has float32's range and needs none.

    Args:
      precision: one of PRECISIONS.

    Returns:
      The policy name that was set.

    Raises:
      ParameterError: for a precision not in PRECISIONS.
    """
    policy = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    logging.info("Precision: %s (requested %s).", policy, precision)
    return policy
