"""Minimal Keras-2 -> Keras-3 compatibility layer used only by the oracle test.

The oracle runs the ORIGINAL ``create_unet_like_model`` source text taken out of the
pyliverlesionseg 0.3 wheel.  Its function body imports Keras 2.2 module paths that Keras 3 no longer
has; ``load_original_create_unet_like_model`` rewrites exactly these five import lines to import
from this module instead (everything else in the source is executed unchanged):

    from keras.layers import Input, Dropout, MaxPooling3D, Concatenate, Multiply, Add, Reshape, Lambda, AveragePooling3D
    from keras.layers.convolutional import Conv3D, UpSampling3D, Cropping3D
    from keras.layers.advanced_activations import LeakyReLU, PReLU
    from keras.layers.normalization import BatchNormalization
    from keras import backend as K

Pooling / upsampling layers only coerce their numpy-float sizes to ints.  ``K.mean`` / ``K.std`` reduce in float64 (cast back to the input dtype at the end), so the
normalisation ``Lambda`` of the original code becomes a layer whose statistics are float64.
``K.std`` is the population standard deviation, as in Keras 2's TensorFlow backend
(``sqrt(mean(square(x - mean(x))))``); ``K.epsilon()`` is Keras' default 1e-7.
Must be imported after ``KERAS_BACKEND=torch`` is set (this folder's conftest.py does that); raises
``RuntimeError`` if Keras runs on another backend.
"""
from __future__ import annotations

import warnings

import keras
from keras import ops
from keras.layers import (  # noqa: F401
    Add,
    BatchNormalization,
    Concatenate,
    Conv3D,
    Cropping3D,
    Dropout,
    Input,
    Lambda,
    Multiply,
    PReLU,
    Reshape,
)

if keras.backend.backend() != "torch":
    raise RuntimeError(f"kul_keras2_compat needs Keras on the torch backend, got {keras.backend.backend()!r} "
                       "(set KERAS_BACKEND=torch before keras is imported)")


def _int_tuple(v):  # noqa: ANN001, ANN202
    """The original passes numpy float arrays such as ``array([3., 3., 3.])`` as pool / upsampling
    sizes (``s_f_p_p // prev_s_f_p_p`` with a float ``prev``); Keras 3 on torch needs Python ints.
    The values are exact integers, so ``int()`` changes nothing else."""
    if isinstance(v, (int, float)):
        return int(v)
    return tuple(int(x) for x in v)


class MaxPooling3D(keras.layers.MaxPooling3D):
    def __init__(self, pool_size=(2, 2, 2), strides=None, *args, **kwargs):  # noqa: ANN001
        super().__init__(_int_tuple(pool_size), None if strides is None else _int_tuple(strides), *args, **kwargs)


class AveragePooling3D(keras.layers.AveragePooling3D):
    def __init__(self, pool_size=(2, 2, 2), strides=None, *args, **kwargs):  # noqa: ANN001
        super().__init__(_int_tuple(pool_size), None if strides is None else _int_tuple(strides), *args, **kwargs)


class UpSampling3D(keras.layers.UpSampling3D):
    def __init__(self, size=(2, 2, 2), **kwargs):  # noqa: ANN001
        super().__init__(_int_tuple(size), **kwargs)


class LeakyReLU(keras.layers.LeakyReLU):
    """Keras 2 signature ``LeakyReLU(alpha=...)``."""

    def __init__(self, alpha: float = 0.3, **kwargs) -> None:
        super().__init__(negative_slope=alpha, **kwargs)


class _Backend:
    """The subset of Keras 2 ``keras.backend`` that ``create_unet_like_model`` uses."""

    @staticmethod
    def epsilon() -> float:
        return 1e-7  # Keras 2 default (keras.json "epsilon": 1e-07)

    @staticmethod
    def int_shape(x) -> tuple:  # noqa: ANN001
        return tuple(x.shape)

    @staticmethod
    def mean(x, axis=None, keepdims=False):  # noqa: ANN001
        m = ops.mean(ops.cast(x, "float64"), axis=axis, keepdims=keepdims)
        return ops.cast(m, x.dtype)

    @staticmethod
    def std(x, axis=None, keepdims=False):  # noqa: ANN001
        x64 = ops.cast(x, "float64")
        m = ops.mean(x64, axis=axis, keepdims=True)
        var = ops.mean(ops.square(x64 - m), axis=axis, keepdims=keepdims)
        return ops.cast(ops.sqrt(var), x.dtype)


K = _Backend()

IMPORT_REWRITES = {
    "from keras.layers import Input, Dropout, MaxPooling3D, Concatenate, Multiply, Add, Reshape, Lambda, AveragePooling3D":
        "from kul_keras2_compat import Input, Dropout, MaxPooling3D, Concatenate, Multiply, Add, Reshape, Lambda, AveragePooling3D",
    "from keras.layers.convolutional import Conv3D, UpSampling3D, Cropping3D":
        "from kul_keras2_compat import Conv3D, UpSampling3D, Cropping3D",
    "from keras.layers.advanced_activations import LeakyReLU, PReLU":
        "from kul_keras2_compat import LeakyReLU, PReLU",
    "from keras.layers.normalization import BatchNormalization":
        "from kul_keras2_compat import BatchNormalization",
    "from keras import backend as K":
        "from kul_keras2_compat import K",
}


def load_original_create_unet_like_model(source_text: str):  # noqa: ANN201
    """Execute the wheel's ``architectures/unet_generalized.py`` text with the import rewrites.

    Returns the original ``create_unet_like_model`` function object.
    """
    patched = source_text
    for old, new in IMPORT_REWRITES.items():
        if patched.count(old) != 1:
            raise RuntimeError(f"expected exactly one occurrence of {old!r} in unet_generalized.py")
        patched = patched.replace(old, new)
    namespace: dict = {"__name__": "pyliverlesionseg_0_3_unet_generalized"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # the source compares strings with `is`
        exec(compile(patched, "pyliverlesionseg/architectures/unet_generalized.py", "exec"), namespace)
    return namespace["create_unet_like_model"]
