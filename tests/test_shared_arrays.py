"""Aligned arrays are read by TensorFlow in place; any other array is copied, never misread."""

import numpy as np
import pytest

from mri_tfdata.model import shared_arrays


@pytest.mark.parametrize("shape,dtype",
                         [((7, 2048), np.float32), ((3,), np.int32), ((0, 4), np.float32)])
def test_empty_is_aligned_and_contiguous(shape, dtype):
    array = shared_arrays.empty(shape, dtype)
    assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
    assert array.ctypes.data % shared_arrays.ALIGNMENT == 0 or array.size == 0


def test_an_aligned_array_is_shared_and_any_other_copied():
    aligned = shared_arrays.empty((16, 8), np.float32)
    aligned[...] = np.arange(128, dtype=np.float32).reshape(16, 8)
    shared = shared_arrays.as_tensor(aligned)
    aligned[0, 0] = -1.0
    assert float(shared[0, 0]) == -1.0  # the same buffer
    np.testing.assert_array_equal(shared.numpy(), aligned)

    flat = shared_arrays.empty((129,), np.float32)
    flat[...] = np.arange(129)
    misaligned = flat[1:]  # 4 bytes past an aligned start
    assert misaligned.ctypes.data % shared_arrays.ALIGNMENT != 0
    strided = aligned[:, ::2]
    readonly = aligned.copy()
    readonly.flags.writeable = False
    for array, base in ((misaligned, flat), (strided, aligned), (readonly, None)):
        tensor = shared_arrays.as_tensor(array)
        want = array.copy()
        np.testing.assert_array_equal(tensor.numpy(), want)
        if base is not None:
            base[...] = 99.0  # a copy does not see later writes
            np.testing.assert_array_equal(tensor.numpy(), want)
