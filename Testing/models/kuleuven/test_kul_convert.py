"""kuleuven.convert error handling on small crafted Keras-2-layout HDF5 files (the wheel and member checksums:
``test_kul_fetch.py``)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from LiverTumorSegLib.models.kuleuven.config import UNetConfig, conv_specs
from LiverTumorSegLib.models.kuleuven.convert import WeightFileError, keras_h5_to_state_dict

TINY = UNetConfig(
    name="tiny",
    number_input_features=1,
    subsample_factors_per_pathway=((1, 1, 1), (2, 2, 2)),
    kernel_sizes_per_pathway=((((3, 3, 1), (3, 3, 3)), ((3, 3, 3),)), (((3, 3, 3),), ())),
    number_features_per_pathway=(((2, 3), (2,)), ((4,), ())),
    output_size=(4, 4, 2),
    padding="valid",
    upsampling="copy",
    residual_connections=True,
    voxel_spacing_mm=(1.0, 1.0, 3.0),
)


def write_keras2_h5(path: Path, cfg: UNetConfig, *, drop: str | None = None, extra: bool = False,
                    reshape: tuple[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Write weights for ``cfg`` in the Keras 2.2 ``save_weights`` layout; returns the kernels."""
    rng = np.random.default_rng(0)
    kernels = {}
    with h5py.File(path, "w") as f:
        names = ["input_1"]
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S")
        for s in conv_specs(cfg):
            if s.name == drop:
                continue
            shape = s.keras_kernel_shape
            if reshape and reshape[0] == s.name:
                shape = reshape[1]
            k = rng.normal(size=shape).astype(np.float32)
            b = rng.normal(size=(s.out_channels,)).astype(np.float32)
            g = f.create_group(s.name)
            g.attrs["weight_names"] = np.array([f"{s.name}/kernel:0".encode(), f"{s.name}/bias:0".encode()])
            g.create_dataset(f"{s.name}/kernel:0", data=k)
            g.create_dataset(f"{s.name}/bias:0", data=b)
            kernels[s.name] = k
            names.append(s.name)
        if extra:
            g = f.create_group("dense_1")
            g.attrs["weight_names"] = np.array([b"dense_1/kernel:0"])
            g.create_dataset("dense_1/kernel:0", data=np.zeros((2, 2), np.float32))
            names.append("dense_1")
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["keras_version"] = b"2.2.2"
        f.attrs["backend"] = b"tensorflow"
        f.create_dataset("header/voxel_size", data=np.array(cfg.voxel_spacing_mm))
    return kernels


def test_valid_file_converts_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "ok.hdf5"
    kernels = write_keras2_h5(path, TINY)
    sd = keras_h5_to_state_dict(path, TINY)
    for name, k in kernels.items():
        np.testing.assert_array_equal(sd[f"convs.{name}.weight"], k.transpose(4, 3, 0, 1, 2))
    import torch

    from LiverTumorSegLib.models.kuleuven.networks import build_model

    model = build_model(TINY, sd)
    y = model(torch.zeros((1, 1, *TINY.input_size)))
    assert tuple(y.shape[2:]) == TINY.output_size


def test_missing_layer(tmp_path: Path) -> None:
    path = tmp_path / "missing.hdf5"
    write_keras2_h5(path, TINY, drop="conv3d_2")
    with pytest.raises(WeightFileError) as err:
        keras_h5_to_state_dict(path, TINY)
    msg = str(err.value)
    assert "missing.hdf5" in msg and "conv3d_2" in msg and "(3, 3, 3, 2, 3)" in msg and "missing" in msg


def test_extra_layer(tmp_path: Path) -> None:
    path = tmp_path / "extra.hdf5"
    write_keras2_h5(path, TINY, extra=True)
    with pytest.raises(WeightFileError, match=r"extra\.hdf5.*dense_1"):
        keras_h5_to_state_dict(path, TINY)


def test_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "shape.hdf5"
    write_keras2_h5(path, TINY, reshape=("conv3d_1", (3, 3, 3, 1, 2)))
    with pytest.raises(WeightFileError) as err:
        keras_h5_to_state_dict(path, TINY)
    msg = str(err.value)
    assert "shape.hdf5" in msg and "conv3d_1" in msg and "(3, 3, 3, 1, 2)" in msg and "(3, 3, 1, 1, 2)" in msg


def test_error_is_value_error(tmp_path: Path) -> None:
    assert issubclass(WeightFileError, ValueError)
