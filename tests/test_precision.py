"""Tests for mri_tfdata.runtime.precision: policy resolution, hardware detection and loss scaling."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mri_tfdata.core.errors import ParameterError
from mri_tfdata.model import architecture, optimization
from mri_tfdata.runtime import precision


@pytest.fixture
def no_gpu():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("checks CPU-only resolution")


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_explicit_names_are_kept_and_set(name):
    assert precision.resolve_precision(name) == name
    assert precision.apply_precision(name) == name
    assert keras.mixed_precision.global_policy().name == name


def test_bad_name_lists_accepted_names():
    accepted = "auto, float32, mixed_float16, mixed_bfloat16"
    with pytest.raises(ParameterError, match=f"precision='float16'.*Use one of: {accepted}"):
        precision.resolve_precision("float16")


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "mixed_bfloat16"),
        ({"avx2", "amx_bf16", "amx_tile"}, "mixed_bfloat16"),
        ({"avx2", "avx512f", "avx512_vnni"}, "float32"),
        (set(), "float32"),
    ],
)
def test_auto_on_cpu_follows_native_bf16(monkeypatch, no_gpu, flags, expected):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: flags)
    assert precision.resolve_precision("auto") == expected


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nflags\t\t: fpu sse avx512_bf16 amx_bf16\n\nprocessor\t: 1\nflags : fpu\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert precision._cpu_flags(x86) == {"fpu", "sse", "avx512_bf16", "amx_bf16"}
    assert "bf16" in precision._cpu_flags(arm)
    assert precision._cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(
    "policy, loss_scaled", [("mixed_float16", True), ("mixed_bfloat16", False)]
)
def test_compile_adds_loss_scaling_only_for_float16(policy, loss_scaled):
    precision.apply_precision(policy)
    head = architecture.build_head(hidden_units=(8,))
    optimization.compile_model(head, learning_rate=1e-3)
    assert isinstance(head.optimizer, keras.optimizers.LossScaleOptimizer) == loss_scaled
    assert head.get_layer("dense_0").compute_dtype == policy.split("_")[1]
    assert head.output.dtype == "float32"
    features = np.random.default_rng(0).normal(size=(8, architecture.FEATURE_DIM)).astype("float32")
    history = head.fit(features, np.arange(8) % 4, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
