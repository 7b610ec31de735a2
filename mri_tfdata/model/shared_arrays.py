"""NumPy arrays TensorFlow reads in place: 64-byte aligned buffers, shared without a copy."""

import numpy as np
import tensorflow as tf

# TensorFlow's CPU kernels require buffers aligned as its own allocator aligns them (some abort
# on a misaligned one); NumPy aligns to 16 bytes only.
ALIGNMENT = 64


def empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose buffer starts on an ALIGNMENT boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + size].view(dtype).reshape(shape)


def as_tensor(array: np.ndarray) -> tf.Tensor:
    """`array` as a CPU tensor: its own buffer when it is aligned, C-contiguous and writable (the
    tensor keeps the array alive, and later writes to the array show through it), else a copy."""
    array = np.asarray(array)
    if (array.size and array.flags.c_contiguous and array.flags.writeable
            and array.ctypes.data % ALIGNMENT == 0):
        try:
            return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        except (BufferError, TypeError, ValueError):
            pass  # a dtype DLPack cannot carry: copied below
    return tf.convert_to_tensor(array)
