"""PyTorch re-implementation of ``create_unet_like_model`` from pyliverlesionseg 0.3.

Source: ``pyliverlesionseg/architectures/unet_generalized.py`` in
``pyliverlesionseg-0.3-py3-none-any.whl`` (Apache-2.0, Xikai Tang and Georg Schramm, KU Leuven;
itself derived from DeepVoxNet v1 by Robben, Bertels et al.).  Only the options that the two
published models use are implemented (max pooling, LeakyReLU(0.01), instance normalisation as a
Keras ``Lambda``, no batch normalisation, no dense connections, no metadata inputs, no output mask,
sigmoid output).  Everything else raises ``NotImplementedError`` in :class:`UNetConfig`.

Array conventions
-----------------
The package feeds arrays in ``(x, y, z)`` index order (RAS orientation for both models).  The
PyTorch module takes tensors shaped ``(batch, channels, x, y, z)`` - i.e. the Keras
``(batch, x, y, z, channels)`` layout with the channel axis moved to position 1.  Keras kernels are
``(kx, ky, kz, in, out)``; the converted PyTorch kernels are ``(out, in, kx, ky, kz)``.

Layer names
-----------
Convolutions are stored in ``UNetLike.convs`` under the names Keras 2 gave them in a fresh session,
``conv3d_1`` ... ``conv3d_N``, in the order in which ``create_unet_like_model`` creates them.  That is
what :mod:`LiverTumorSegLib.models.kuleuven.convert` matches against the HDF5 layer names.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from LiverTumorSegLib.models.kuleuven.config import (
    LESION_CONFIG,
    LIVER_CONFIG,
    ConvSpec,
    Int3,
    UNetConfig,
    conv_specs,
    infer_sizes,
)

__all__ = [
    "UNetConfig",
    "UNetLike",
    "ConvSpec",
    "LIVER_CONFIG",
    "LESION_CONFIG",
    "conv_specs",
    "infer_sizes",
    "instance_norm_float64",
    "build_model",
    "predict_patch",
]


def _float64_channel_stats(x: torch.Tensor, chunk_elements: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and population std of ``x`` (N, C, X, Y, Z), float64 accumulation.

    Shifted-data algorithm in one pass: with a float32 pilot mean ``p`` (from every 4th voxel),
    ``d = x - p`` is formed in float32 in small slabs along X (cache-sized, no full float64 copy) and
    ``S1 = sum(d)``, ``S2 = sum(d * d)`` are accumulated in float64; ``mean = p + S1 / n``,
    ``var = S2 / n - (S1 / n)^2``.  Against a two-pass float64 reference the errors are ~1e-8
    (relative, std) and ~1e-8 (absolute, mean) - checked in Testing/models/kuleuven/test_kul_networks.py.
    """
    n, c = x.shape[:2]
    count = float(np.prod(x.shape[2:]))
    pilot = x[:, :, ::4, ::4, ::4].mean(dim=(2, 3, 4), keepdim=True)
    per_x = max(1, n * c * int(np.prod(x.shape[3:])))
    slab = max(1, chunk_elements // per_x)
    s1 = torch.zeros((n, c), dtype=torch.float64, device=x.device)
    s2 = torch.zeros((n, c), dtype=torch.float64, device=x.device)
    for part in torch.split(x, slab, dim=2):
        d = part - pilot
        s1 += torch.sum(d, dim=(2, 3, 4), dtype=torch.float64)
        s2 += torch.sum(d.mul_(d), dim=(2, 3, 4), dtype=torch.float64)
    m1 = s1 / count
    mean = pilot[:, :, 0, 0, 0].to(torch.float64) + m1
    var = torch.clamp(s2 / count - m1 * m1, min=0.0)
    return mean, torch.sqrt(var)


def _float64_channel_stats_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightforward two-pass float64 statistics (slow; used by the tests as reference)."""
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=(2, 3, 4))
    var = (x64 - mean[:, :, None, None, None]).square().mean(dim=(2, 3, 4))
    return mean, var.sqrt()


def instance_norm_float64(x: torch.Tensor, epsilon: float = 1e-7) -> torch.Tensor:
    """``(x - mean) / (std + epsilon)`` per sample and channel over the whole patch.

    Reproduces the Keras ``Lambda(lambda x: (x - K.mean(x, axis=[1, 2, 3], keepdims=True)) /
    (K.std(x, axis=[1, 2, 3], keepdims=True) + K.epsilon()))``: population standard deviation,
    epsilon added outside the square root, no affine parameters.  Statistics are accumulated in
    float64; the normalised tensor has the dtype and memory format of ``x`` (a new tensor; ``x`` is
    not modified because residual shortcuts still use it).

    Args:
        x: feature map ``(N, C, X, Y, Z)``.
        epsilon: ``K.epsilon()`` (1e-7 in Keras 2).
    """
    mean, std = _float64_channel_stats(x)
    shift = mean.to(x.dtype)[:, :, None, None, None]
    scale = (1.0 / (std + epsilon)).to(x.dtype)[:, :, None, None, None]
    # (x - mean) first, as Keras does: a fused x * scale - mean * scale cancels catastrophically
    # when |mean| >> std (and would not map a constant input to exactly 0).
    return (x - shift).mul_(scale)


def _center_crop_to(x: torch.Tensor, target_xyz: tuple[int, ...]) -> torch.Tensor:
    """Keras ``Cropping3D([int((l - r) / 2) ...])``: crop the same amount on both sides of each axis."""
    crops = [int((s - t) / 2) for s, t in zip(x.shape[2:], target_xyz, strict=True)]
    out = x[:, :, crops[0]:x.shape[2] - crops[0], crops[1]:x.shape[3] - crops[1], crops[2]:x.shape[4] - crops[2]]
    if tuple(out.shape[2:]) != tuple(target_xyz):
        raise RuntimeError(f"centre crop of {tuple(x.shape[2:])} to {tuple(target_xyz)} is not symmetric")
    return out


class UNetLike(nn.Module):
    """U-Net of ``create_unet_like_model`` (pyliverlesionseg 0.3) for one :class:`UNetConfig`.

    Input ``(N, C_in, X, Y, Z)`` with ``(X, Y, Z) == cfg.input_size``, float32, values as the package
    feeds them (e.g. ``clip(HU / 1000, -0.2, 0.2) * 2.5``).  Output ``(N, 1, *cfg.output_size)``,
    sigmoid probabilities.  Other input sizes work as long as every pooling divides and every
    centre crop is symmetric (same constraints as Keras).
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.specs = conv_specs(cfg)
        self.input_size, self.alignment_pools = infer_sizes(cfg)
        self.convs = nn.ModuleDict()
        for s in self.specs:
            self.convs[s.name] = nn.Conv3d(
                s.in_channels, s.out_channels, s.kernel, padding="same" if cfg.padding == "same" else 0
            )

    # -- building blocks -------------------------------------------------------------------------
    def _norm_act(self, x: torch.Tensor) -> torch.Tensor:
        x = instance_norm_float64(x, self.cfg.norm_epsilon)
        return F.leaky_relu(x, self.cfg.leaky_relu_alpha, inplace=True)

    def _conv(self, x: torch.Tensor, it: Iterator[str]) -> torch.Tensor:
        y = self.convs[next(it)](x)
        return y.contiguous(memory_format=torch.channels_last_3d)

    def _upsample(self, x: torch.Tensor, factor: Int3) -> torch.Tensor:
        if factor == (1, 1, 1):
            return x
        x = F.interpolate(x, scale_factor=factor, mode="nearest")  # Keras UpSampling3D = repeat
        if self.cfg.upsampling == "linear":
            # TriLinear(): UpSampling3D(size) then AveragePooling3D(size, strides=1, padding='valid')
            x = F.avg_pool3d(x, kernel_size=factor, stride=1)
        return x.contiguous(memory_format=torch.channels_last_3d)

    def _block(self, x: torch.Tensor, kernels: tuple[Int3, ...], first_in_network: bool, it: Iterator[str]) -> torch.Tensor:
        shortcut = x
        for j in range(len(kernels)):
            if not (first_in_network and j == 0):
                x = self._norm_act(x)
            x = self._conv(x, it)
            if j == len(kernels) - 1 and self.cfg.residual_connections:
                sc = _center_crop_to(shortcut, tuple(x.shape[2:]))
                if sc.shape[1] != x.shape[1]:
                    sc = self._conv(sc, it)
                x = x.add_(sc)  # x is a fresh conv output
        return x

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network; ``x`` is ``(N, C_in, X, Y, Z)``, returns ``(N, C_out, *output_size)``."""
        cfg = self.cfg
        n = len(cfg.subsample_factors_per_pathway)
        it = iter(self.convs.keys())
        x = x.contiguous(memory_format=torch.channels_last_3d)
        left: list[torch.Tensor] = []
        prev = (1, 1, 1)
        for level in range(n):
            sf = cfg.subsample_factors_per_pathway[level]
            factor = tuple(a // b for a, b in zip(sf, prev, strict=True))
            prev = sf
            if factor != (1, 1, 1):
                x = F.max_pool3d(x, kernel_size=factor, stride=factor).contiguous(memory_format=torch.channels_last_3d)
            x = self._block(x, cfg.kernel_sizes_per_pathway[level][0], level == 0, it)
            left.append(x)
        prev = cfg.subsample_factors_per_pathway[-1]
        for level in reversed(range(n)):
            # Keras loop index i = level + 1; alignment pool is 1x1x1 for both published models
            pool = self.alignment_pools[level + 1]
            if pool != (1, 1, 1):
                x = F.avg_pool3d(x, kernel_size=pool, stride=1)
            if level < n - 1:
                skip = _center_crop_to(left[level], tuple(x.shape[2:]))
                x = torch.cat([skip, x], dim=1).contiguous(memory_format=torch.channels_last_3d)
                del skip
                left[level] = None  # type: ignore[call-overload]  # free the skip early
            x = self._block(x, cfg.kernel_sizes_per_pathway[level][1], False, it)
            target = cfg.subsample_factors_per_pathway[level - 1] if level > 0 else (1, 1, 1)
            factor = tuple(a // b for a, b in zip(prev, target, strict=True))
            prev = target
            x = self._upsample(x, factor)
        for _ in cfg.kernel_sizes_common_pathway:
            x = self._norm_act(x)
            x = self._conv(x, it)
        return torch.sigmoid(x)


def build_model(cfg: UNetConfig, state_dict: Mapping[str, np.ndarray]) -> UNetLike:
    """:class:`UNetLike` for ``cfg`` in eval mode with weights from a numpy state dict
    (as returned by :func:`LiverTumorSegLib.models.kuleuven.convert.keras_h5_to_state_dict`); strict key / shape check."""
    model = UNetLike(cfg)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def predict_patch(model: UNetLike, patch_xyz: np.ndarray) -> np.ndarray:
    """Run one patch.

    Args:
        model: network in eval mode.
        patch_xyz: ``(X, Y, Z)`` float array (single channel) of size ``model.input_size``.

    Returns:
        ``(x, y, z)`` float32 probabilities of size ``model.cfg.output_size``.
    """
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(patch_xyz, dtype=np.float32))[None, None].to(device)
    # cuDNN's TF32 convolutions (PyTorch's default) moved lesion probabilities by up to 0.026 and flipped 24-63 of
    # 324,576 voxels at 0.5 on an H200; in float32 the GPU matched the CPU to 5e-5 and was no slower.
    previous_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            y = model(x)
    finally:
        torch.backends.cudnn.allow_tf32 = previous_tf32
    return y[0, 0].contiguous().cpu().numpy()


def kuleuven_unet(config: str) -> UNetLike:
    """The manifest's network factory: ``UNetLike`` of ``"liver"`` or ``"lesion"`` (random weights)."""
    from LiverTumorSegLib.models.kuleuven.config import config_by_name

    return UNetLike(config_by_name(config))
