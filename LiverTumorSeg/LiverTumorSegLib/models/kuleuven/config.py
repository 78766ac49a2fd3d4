"""Configuration of ``create_unet_like_model`` (pyliverlesionseg 0.3) - numpy only, no torch.

Holds the two published model configurations, the port of the Keras size / position bookkeeping
(:func:`infer_sizes`) and the list of convolutions in Keras creation order (:func:`conv_specs`),
which :mod:`LiverTumorSegLib.models.kuleuven.convert` uses to match HDF5 layer names and :mod:`LiverTumorSegLib.models.kuleuven.networks` to build
the PyTorch module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "Int3",
    "UNetConfig",
    "ConvSpec",
    "LIVER_CONFIG",
    "LESION_CONFIG",
    "conv_specs",
    "infer_sizes",
    "size_tables",
    "smallest_input_size",
]

Int3 = tuple[int, int, int]


@dataclass(frozen=True)
class UNetConfig:
    """Arguments of ``create_unet_like_model`` that the published models set.

    Attributes:
        name: human-readable model name.
        number_input_features: input channels (1 for both published models).
        subsample_factors_per_pathway: cumulative pooling factor of each U level, ``(fx, fy, fz)``.
        kernel_sizes_per_pathway: per level ``[down_kernels, up_kernels]``; each kernel ``(kx, ky, kz)``.
        number_features_per_pathway: per level ``[down_features, up_features]`` matching the kernels.
        kernel_sizes_common_pathway: kernels of the final (common) pathway.
        number_features_common_pathway: features of the final pathway (last = number of outputs).
        output_size: output patch size in voxels ``(x, y, z)``.
        padding: Keras padding of every convolution, ``"same"`` or ``"valid"``.
        upsampling: ``"copy"`` (nearest) or ``"linear"`` (nearest then stride-1 average pool).
        residual_connections: residual blocks with centre-cropped shortcuts.
        leaky_relu_alpha: negative slope of the LeakyReLU.
        norm_epsilon: ``K.epsilon()`` added to the standard deviation (outside the square root).
        voxel_spacing_mm: spacing the model expects, ``header/voxel_size`` in the HDF5 file.
    """

    name: str
    number_input_features: int
    subsample_factors_per_pathway: tuple[Int3, ...]
    kernel_sizes_per_pathway: tuple[tuple[tuple[Int3, ...], tuple[Int3, ...]], ...]
    number_features_per_pathway: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    output_size: Int3
    padding: Literal["same", "valid"]
    upsampling: Literal["copy", "linear"]
    residual_connections: bool = False
    kernel_sizes_common_pathway: tuple[Int3, ...] = ((1, 1, 1),)
    number_features_common_pathway: tuple[int, ...] = (1,)
    leaky_relu_alpha: float = 0.01
    norm_epsilon: float = 1e-7
    voxel_spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # options of create_unet_like_model that are fixed here (documented, not configurable)
    pooling: Literal["max"] = field(default="max")

    def __post_init__(self) -> None:
        n = len(self.subsample_factors_per_pathway)
        if not len(self.kernel_sizes_per_pathway) == len(self.number_features_per_pathway) == n:
            raise ValueError("Inconsistent number of pathways.")
        for p in range(n - 1):
            a, b = self.subsample_factors_per_pathway[p], self.subsample_factors_per_pathway[p + 1]
            if any(fb % fa for fa, fb in zip(a, b, strict=True)):
                raise ValueError("Each subsample factor must be an integer multiple of the previous one.")
        for ks, nf in zip(self.kernel_sizes_per_pathway, self.number_features_per_pathway, strict=True):
            if len(ks) != 2 or len(nf) != 2 or any(len(k) != len(f) for k, f in zip(ks, nf, strict=True)):
                raise ValueError("kernel sizes and feature numbers must match per pathway side.")
        if len(self.kernel_sizes_common_pathway) != len(self.number_features_common_pathway):
            raise ValueError("Inconsistent depth of common pathway.")
        if self.padding not in ("same", "valid"):
            raise NotImplementedError(f"padding {self.padding!r}")
        if self.upsampling not in ("copy", "linear"):
            raise NotImplementedError(f"upsampling {self.upsampling!r}")
        if self.pooling != "max":
            raise NotImplementedError("only max pooling is implemented")

    @property
    def input_size(self) -> Int3:
        """True network input size in voxels ``(x, y, z)`` (as printed by the Keras code)."""
        return infer_sizes(self)[0]


# Arguments from pyliverlesionseg 0.3 cnn_liver_lesion_seg_CT_MR_functions.py::unet_liver_predict
# (segment_size [163, 136, 136] from cnn_liver_lesion_seg_CT_MR_main, spacing from header/voxel_size).
LIVER_CONFIG = UNetConfig(
    name="kul_liver_3mm",
    number_input_features=1,
    subsample_factors_per_pathway=((1, 1, 1), (3, 3, 3), (9, 9, 9), (27, 27, 27)),
    kernel_sizes_per_pathway=(
        (((3, 3, 1), (3, 3, 3)), ((3, 3, 3), (3, 3, 1))),
        (((3, 3, 1), (3, 3, 3)), ((3, 3, 3), (3, 3, 1))),
        (((3, 3, 1), (3, 3, 3)), ((3, 3, 3), (3, 3, 1))),
        (((3, 3, 3), (3, 3, 3)), ()),
    ),
    number_features_per_pathway=(
        ((20, 40), (40, 20)),
        ((40, 80), (80, 40)),
        ((80, 160), (160, 80)),
        ((160, 160), ()),
    ),
    output_size=(163, 136, 136),
    padding="same",
    upsampling="linear",
    residual_connections=False,
    voxel_spacing_mm=(3.0, 3.0, 3.0),
)

# Arguments from cnn_liver_lesion_seg_CT_MR_functions.py::unet_lesion_predict
# (segment_size [92, 84, 42] from cnn_liver_lesion_seg_CT_MR_main).
LESION_CONFIG = UNetConfig(
    name="kul_lesion_1x1x3mm",
    number_input_features=1,
    subsample_factors_per_pathway=((1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8)),
    kernel_sizes_per_pathway=(
        (((3, 3, 1), (3, 3, 3)), ((3, 3, 3), (3, 3, 1))),
        (((3, 3, 1), (3, 3, 3)), ((3, 3, 3), (3, 3, 1))),
        (((3, 3, 1), (3, 3, 3)), ((3, 3, 3), (3, 3, 1))),
        (((3, 3, 1), (3, 3, 3)), ()),
    ),
    number_features_per_pathway=(
        ((20, 40), (40, 20)),
        ((40, 80), (80, 40)),
        ((80, 160), (160, 80)),
        ((160, 160), ()),
    ),
    output_size=(92, 84, 42),
    padding="valid",
    upsampling="copy",
    residual_connections=True,
    voxel_spacing_mm=(1.0, 1.0, 3.0),
)


def size_tables(cfg: UNetConfig) -> tuple[list[list[int]], list[list[int]], list[Int3]]:
    """Possible ``(input_sizes, output_sizes)`` per axis and the alignment pool sizes (see
    :func:`infer_sizes`); ``output_sizes[d][k]`` belongs to ``input_sizes[d][k]``.

    Port of the numpy bookkeeping in ``create_unet_like_model`` (candidate sizes 0..499 per axis).
    """
    sfpp = [tuple(s) for s in cfg.subsample_factors_per_pathway]
    kspp = [[list(k[0]), list(k[1])] for k in cfg.kernel_sizes_per_pathway]
    valid = cfg.padding == "valid"
    left_pos: list[np.ndarray] = []
    right_pos: list[np.ndarray] = []
    left_sizes: list[np.ndarray] = []
    input_sizes = output_sizes = np.stack([np.arange(500)] * 3, axis=-1)
    prev_sf = np.ones(3)
    prev_pos = np.zeros(3)
    for s_f_p_p, k_s_p_p in zip([(1, 1, 1)] + sfpp, [[[], []]] + kspp, strict=True):
        s_f = s_f_p_p // prev_sf
        prev_sf = np.array(s_f_p_p)
        prev_pos = np.abs(prev_pos - (1 - (s_f_p_p * (s_f - 1) + 1) % 2))
        output_sizes = (output_sizes // s_f) * ((output_sizes % s_f) == 0)
        for k_s in k_s_p_p[0]:
            output_sizes = output_sizes - ((np.array(k_s) - 1) if valid else 0)
            prev_pos = np.abs(prev_pos - (1 - (s_f_p_p * (np.array(k_s) - 1) + 1) % 2))
        left_pos.append(prev_pos)
        left_sizes.append(output_sizes)
    prev_sf = np.array(sfpp[-1])
    for i, (s_f_p_p, k_s_p_p) in reversed(list(enumerate(zip([(1, 1, 1), (1, 1, 1)] + sfpp[:-1], [[[], []]] + kspp, strict=True)))):
        right_pos.append(prev_pos)
        output_sizes = output_sizes - np.abs(left_pos[i] - prev_pos)
        output_sizes = output_sizes * (((left_sizes[i] - output_sizes) % 2) == 0)
        prev_pos = left_pos[i]
        for k_s in k_s_p_p[1]:
            output_sizes = output_sizes - ((np.array(k_s) - 1) if valid else 0)
            prev_pos = np.abs(prev_pos - (1 - (s_f_p_p * (np.array(k_s) - 1) + 1) % 2))
        s_f = prev_sf // s_f_p_p
        prev_sf = np.array(s_f_p_p)
        output_sizes = output_sizes * s_f
        if cfg.upsampling == "linear":
            output_sizes = output_sizes - s_f + 1
    for k_s in cfg.kernel_sizes_common_pathway:
        output_sizes = output_sizes - ((np.array(k_s) - 1) if valid else 0)
    right_pos.reverse()
    possible_in = [[int(v) for v in input_sizes[output_sizes[:, d] > 0, d]] for d in range(3)]
    possible_out = [[int(v) for v in output_sizes[output_sizes[:, d] > 0, d].astype(int)] for d in range(3)]
    align = [tuple(int(v) for v in (np.abs(left_pos[i] - right_pos[i]) + 1)) for i in range(len(sfpp) + 1)]
    return possible_in, possible_out, align  # type: ignore[return-value]


def infer_sizes(cfg: UNetConfig) -> tuple[Int3, list[Int3]]:
    """Port of the size / position bookkeeping of ``create_unet_like_model``.

    Returns:
        ``(input_size, alignment_pool_sizes)``: the true input size in voxels ``(x, y, z)`` for
        ``cfg.output_size`` and, for every step ``i = 0..n`` of the upward loop, the pool size of the
        stride-1 ``AveragePooling3D`` the Keras code inserts to re-align odd/even positions
        (``|left_output_position - right_input_position| + 1``).

    Raises:
        ValueError: if ``cfg.output_size`` is not reachable (same check as the Keras code).
    """
    possible_in, possible_out, align = size_tables(cfg)
    for d, o in enumerate(cfg.output_size):
        if o not in possible_out[d]:
            raise ValueError(f"output_size {cfg.output_size} not possible along axis {d}; first options {possible_out[d][:10]}")
    in_size = tuple(int(possible_in[d][possible_out[d].index(o)]) for d, o in enumerate(cfg.output_size))
    return in_size, align  # type: ignore[return-value]


def smallest_input_size(cfg: UNetConfig) -> Int3:
    """Smallest valid input size per axis (used to evaluate a constant patch cheaply)."""
    possible_in, _, _ = size_tables(cfg)
    return tuple(p[0] for p in possible_in)  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvSpec:
    """One ``Conv3D`` in Keras creation order: ``name`` (``conv3d_k``), kernel ``(kx, ky, kz)``,
    ``in_channels``, ``out_channels`` and a role string for error messages."""

    name: str
    kernel: Int3
    in_channels: int
    out_channels: int
    role: str

    @property
    def keras_kernel_shape(self) -> tuple[int, int, int, int, int]:
        """Keras kernel shape ``(kx, ky, kz, in, out)``."""
        return (*self.kernel, self.in_channels, self.out_channels)


def conv_specs(cfg: UNetConfig) -> list[ConvSpec]:
    """All convolutions of the model in the order ``create_unet_like_model`` creates them."""
    specs: list[ConvSpec] = []

    def add(kernel: Int3, cin: int, cout: int, role: str) -> None:
        specs.append(ConvSpec(f"conv3d_{len(specs) + 1}", tuple(kernel), cin, cout, role))  # type: ignore[arg-type]

    n = len(cfg.subsample_factors_per_pathway)
    channels = cfg.number_input_features
    left_channels: list[int] = []
    for level in range(n):
        kernels, feats = cfg.kernel_sizes_per_pathway[level][0], cfg.number_features_per_pathway[level][0]
        shortcut = channels
        for j, (k, f) in enumerate(zip(kernels, feats, strict=True)):
            add(k, channels, f, f"down level {level} conv {j}")
            channels = f
            if j == len(kernels) - 1 and cfg.residual_connections and shortcut != channels:
                add((1, 1, 1), shortcut, channels, f"down level {level} shortcut")
        left_channels.append(channels)
    for level in reversed(range(n)):
        if level < n - 1:
            channels = left_channels[level] + channels  # Concatenate([skip, upsampled])
        kernels, feats = cfg.kernel_sizes_per_pathway[level][1], cfg.number_features_per_pathway[level][1]
        shortcut = channels
        for j, (k, f) in enumerate(zip(kernels, feats, strict=True)):
            add(k, channels, f, f"up level {level} conv {j}")
            channels = f
            if j == len(kernels) - 1 and cfg.residual_connections and shortcut != channels:
                add((1, 1, 1), shortcut, channels, f"up level {level} shortcut")
    for i, (k, f) in enumerate(zip(cfg.kernel_sizes_common_pathway, cfg.number_features_common_pathway, strict=True)):
        add(k, channels, f, f"common conv {i}")
        channels = f
    return specs


CONFIGS = {"liver": LIVER_CONFIG, "lesion": LESION_CONFIG}


def config_by_name(name: str) -> UNetConfig:
    """``"liver"`` or ``"lesion"`` (the manifest's ``pypi_wheel.config``) -> its configuration."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown KU Leuven network {name!r}; known: {', '.join(CONFIGS)}") from None
