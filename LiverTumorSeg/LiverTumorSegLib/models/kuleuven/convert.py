"""Read the Keras 2.2 HDF5 weight files of pyliverlesionseg 0.3 into PyTorch state dicts.

Only ``h5py`` and ``numpy`` are used here (torch is imported by :mod:`LiverTumorSegLib.models.kuleuven.networks` only):
the state dict has PyTorch parameter names and layouts, with numpy arrays as values;
:func:`LiverTumorSegLib.models.kuleuven.networks.build_model` turns it into tensors (``torch.from_numpy``, no copy).

HDF5 layout written by Keras 2.2 ``model.save_weights`` / ``model.save`` (verified on both files):
``/<layer>/`` groups with attribute ``weight_names`` (empty for layers without weights) and datasets
``/<layer>/<layer>/kernel:0`` ``(kx, ky, kz, in, out)`` float32 and ``/<layer>/<layer>/bias:0``
``(out,)``; root attribute ``layer_names`` (topological order); extra group ``/header/voxel_size``
(the package's own addition, float64 ``(3,)``).
"""
from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np

from LiverTumorSegLib.models.kuleuven.config import ConvSpec, UNetConfig, conv_specs

PathLike = str | Path

__all__ = [
    "WeightFileError",
    "read_keras_conv_weights",
    "keras_h5_to_state_dict",
    "read_voxel_size_mm",
]


class WeightFileError(ValueError):
    """The HDF5 weight file does not match the model configuration (missing / extra layer, shape)."""


def _layers_with_weights(f: h5py.File) -> dict[str, list[str]]:
    """``{layer_name: [weight_name, ...]}`` for every layer group that holds weights."""
    root = f["model_weights"] if "model_weights" in f else f  # full-model files nest the weights
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in root.attrs.get("layer_names", list(root.keys()))]
    out: dict[str, list[str]] = {}
    for name in names:
        if name not in root:
            continue
        wn = [w.decode() if isinstance(w, bytes) else str(w) for w in root[name].attrs.get("weight_names", [])]
        if wn:
            out[name] = wn
    return out


def read_keras_conv_weights(h5: h5py.File, cfg: UNetConfig, source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Check an open Keras HDF5 file against ``cfg`` and return ``{conv3d_k: (kernel, bias)}``.

    Kernels keep the Keras layout ``(kx, ky, kz, in, out)``.

    Raises:
        WeightFileError: a convolution expected by ``cfg`` is missing, the file holds a layer with
            weights that ``cfg`` does not have, a layer has other weights than kernel + bias, or a
            shape differs.  The message names ``source``, the layer and both shapes.
    """
    specs: list[ConvSpec] = conv_specs(cfg)
    expected = {s.name: s for s in specs}
    present = _layers_with_weights(h5)
    root = h5["model_weights"] if "model_weights" in h5 else h5
    missing = [n for n in expected if n not in present]
    if missing:
        s = expected[missing[0]]
        raise WeightFileError(
            f"{source}: layer {s.name!r} ({s.role}, expected kernel {s.keras_kernel_shape}) is missing "
            f"for model {cfg.name!r}; missing layers: {missing}"
        )
    extra = [n for n in present if n not in expected]
    if extra:
        raise WeightFileError(
            f"{source}: layer {extra[0]!r} with weights {present[extra[0]]} is not part of model {cfg.name!r} "
            f"(extra layers: {extra})"
        )
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s in specs:
        weight_names = present[s.name]
        kernels = [w for w in weight_names if w.endswith("kernel:0")]
        biases = [w for w in weight_names if w.endswith("bias:0")]
        if len(kernels) != 1 or len(biases) != 1 or len(weight_names) != 2:
            raise WeightFileError(f"{source}: layer {s.name!r} has weights {weight_names}, expected one kernel and one bias")
        kernel = np.asarray(root[s.name][kernels[0]], dtype=np.float32)
        bias = np.asarray(root[s.name][biases[0]], dtype=np.float32)
        if kernel.shape != s.keras_kernel_shape:
            raise WeightFileError(
                f"{source}: layer {s.name!r} ({s.role}) kernel shape {kernel.shape} != expected {s.keras_kernel_shape}"
            )
        if bias.shape != (s.out_channels,):
            raise WeightFileError(
                f"{source}: layer {s.name!r} ({s.role}) bias shape {bias.shape} != expected {(s.out_channels,)}"
            )
        out[s.name] = (kernel, bias)
    return out


def read_voxel_size_mm(h5: h5py.File) -> tuple[float, float, float] | None:
    """``header/voxel_size`` (mm, ``(x, y, z)``) as stored by the package, or ``None``."""
    if "header" in h5 and "voxel_size" in h5["header"]:
        return tuple(float(v) for v in np.asarray(h5["header/voxel_size"]))  # type: ignore[return-value]
    return None


def _open_h5(source: PathLike | bytes) -> h5py.File:
    if isinstance(source, (bytes, bytearray)):
        return h5py.File(io.BytesIO(source), "r")
    return h5py.File(source, "r")


def keras_h5_to_state_dict(source: PathLike | bytes, cfg: UNetConfig, *, name: str | None = None) -> dict[str, np.ndarray]:
    """Convert a Keras 2.2 HDF5 weight file to a state dict for :class:`LiverTumorSegLib.models.kuleuven.networks.UNetLike`.

    Args:
        source: path of the ``.hdf5`` file, or its bytes (e.g. read from the wheel).
        cfg: model configuration (``LIVER_CONFIG`` or ``LESION_CONFIG``).
        name: file name used in error messages (defaults to ``str(source)`` for paths).

    Returns:
        ``{"convs.conv3d_k.weight": (out, in, kx, ky, kz) float32, "convs.conv3d_k.bias": (out,)}``
        as numpy arrays (PyTorch names and layout).

    Raises:
        WeightFileError: see :func:`read_keras_conv_weights`; also if the stored voxel size differs
            from ``cfg.voxel_spacing_mm``.
    """
    label = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")
    with _open_h5(source) as f:
        weights = read_keras_conv_weights(f, cfg, label)
        vs = read_voxel_size_mm(f)
    if vs is not None and not np.allclose(vs, cfg.voxel_spacing_mm):
        raise WeightFileError(f"{label}: header/voxel_size {vs} mm != {cfg.voxel_spacing_mm} mm expected by {cfg.name!r}")
    state: dict[str, np.ndarray] = {}
    for layer, (kernel, bias) in weights.items():
        state[f"convs.{layer}.weight"] = np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))  # -> (out, in, kx, ky, kz)
        state[f"convs.{layer}.bias"] = bias
    return state
