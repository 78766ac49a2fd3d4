"""Unit checks of kuleuven.networks that do not need the wheel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from LiverTumorSegLib.models.kuleuven.config import (
    LESION_CONFIG,
    LIVER_CONFIG,
    UNetConfig,
    conv_specs,
    infer_sizes,
)
from LiverTumorSegLib.models.kuleuven.networks import (
    UNetLike,
    _float64_channel_stats,
    _float64_channel_stats_reference,
    instance_norm_float64,
)


def test_sizes_of_published_models() -> None:
    assert infer_sizes(LIVER_CONFIG)[0] == (189, 162, 162)
    assert infer_sizes(LESION_CONFIG)[0] == (180, 172, 86)
    assert all(p == (1, 1, 1) for p in infer_sizes(LIVER_CONFIG)[1] + infer_sizes(LESION_CONFIG)[1])
    assert len(conv_specs(LIVER_CONFIG)) == 15 and len(conv_specs(LESION_CONFIG)) == 21


@pytest.mark.parametrize("cfg", [LIVER_CONFIG, LESION_CONFIG], ids=["liver", "lesion"])
def test_port_forward_shape_at_published_size(cfg: UNetConfig) -> None:
    """The port's whole forward pass at the published sizes (liver 189x162x162 -> 163x136x136,
    lesion 180x172x86 -> 92x84x42) on the meta device: every pooling, centre crop and concatenation
    is shape-checked without memory or compute.  (``test_kul_oracle.py`` checks that the original
    Keras model has these sizes and compares probabilities at smaller sizes.)"""
    with torch.device("meta"):
        model = UNetLike(cfg)
        y = model(torch.empty((1, cfg.number_input_features, *cfg.input_size)))
    assert y.device.type == "meta"
    assert tuple(y.shape) == (1, 1, *cfg.output_size)


def test_float64_stats_match_two_pass_reference() -> None:
    g = torch.Generator().manual_seed(0)
    for scale, offset in [(0.3, 0.1), (1e-3, 5.0), (10.0, -3.0)]:
        x = (torch.randn(2, 5, 31, 17, 9, generator=g) * scale + offset).contiguous(memory_format=torch.channels_last_3d)
        m, s = _float64_channel_stats(x)
        m0, s0 = _float64_channel_stats_reference(x)
        assert float((m - m0).abs().max()) < 1e-7 * max(1.0, abs(offset))
        assert float(((s - s0) / s0).abs().max()) < 1e-7


def test_instance_norm_semantics() -> None:
    x = torch.randn(1, 3, 8, 7, 6, dtype=torch.float32) * 4 + 2
    y = instance_norm_float64(x)
    x64 = x.double()
    ref = (x64 - x64.mean(dim=(2, 3, 4), keepdim=True)) / (x64.std(dim=(2, 3, 4), keepdim=True, unbiased=False) + 1e-7)
    np.testing.assert_allclose(y.numpy(), ref.float().numpy(), atol=2e-6)
    const = instance_norm_float64(torch.full((1, 2, 4, 4, 4), 0.37))
    assert torch.count_nonzero(const) == 0  # constant input -> exactly 0 (used by the tiling shortcut)


def test_predict_patch_runs_without_tf32_and_restores_the_setting():
    """On an H200, cuDNN's TF32 convolutions (PyTorch's default) flipped 24-63 lesion voxels at 0.5; the port runs in
    float32 (the GPU then matched the CPU to 5e-5) and leaves the global setting as it found it."""
    import torch

    from LiverTumorSegLib.models.kuleuven.networks import predict_patch

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.backends.cudnn.allow_tf32)
            return x * self.weight

    before = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        out = predict_patch(Probe(), np.full((4, 3, 2), 0.25, np.float32))
        assert seen == [False] and torch.backends.cudnn.allow_tf32 is True
        assert out.shape == (4, 3, 2) and np.all(out == 0.25)
    finally:
        torch.backends.cudnn.allow_tf32 = before
