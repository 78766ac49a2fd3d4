"""Patch placement / tiling oracle: the wheel's own ``DeepVoxNet.predict`` vs kuleuven.pipeline.

``general.py`` and ``sampling/`` are imported from the wheel (nothing installed; ``nibabel`` is
stubbed, it is only used for file I/O there; the package ``__init__`` files of ``pyliverlesionseg``
and ``pyliverlesionseg.components`` are bypassed because they import pynetdicom / tensorflow; the
Keras names ``general.py`` imports resolve to Keras 3) and run with a fake Keras model whose ``predict`` is a
deterministic, position-dependent function of the input patch (centre crop + patch mean, so a
wrong patch position or overwrite order changes the result).  ``get_layers_scales`` (which walks
Keras 2 graph internals) is replaced by the answer it gives for these models: scale 1 everywhere.
The wheel comes from the ``kul_wheel`` fixture (a failed download fails the tests).
"""
from __future__ import annotations

import importlib
import sys
import types
import zipfile
from fractions import Fraction

import numpy as np
import pytest

from LiverTumorSegLib.models.kuleuven.config import LESION_CONFIG, LIVER_CONFIG, UNetConfig
from LiverTumorSegLib.models.kuleuven.pipeline import TilingStats, predict_centred_patch, predict_tiled


def fake_network(cfg: UNetConfig):  # noqa: ANN201
    crop = [(i - o) // 2 for i, o in zip(cfg.input_size, cfg.output_size, strict=True)]

    def f(patch: np.ndarray) -> np.ndarray:
        c = patch[crop[0]:crop[0] + cfg.output_size[0], crop[1]:crop[1] + cfg.output_size[1], crop[2]:crop[2] + cfg.output_size[2]]
        return (c + 0.01 * patch.mean() + 0.001 * patch[0, 0, 0]).astype(np.float32)

    return f


@pytest.fixture(scope="module")
def package(kul_wheel, keras_torch, tmp_path_factory):  # noqa: ANN001, ANN201
    """``(general, sampling)`` of the wheel; ``general.py`` imports Keras, hence ``keras_torch``."""
    root = tmp_path_factory.mktemp("wheel_src")
    with zipfile.ZipFile(kul_wheel) as zf:
        for name in zf.namelist():
            if name.startswith("pyliverlesionseg/") and name.endswith(".py"):
                zf.extract(name, root)
    saved = {k: v for k, v in sys.modules.items() if k == "nibabel" or k.startswith("pyliverlesionseg")}
    sys.modules["nibabel"] = types.ModuleType("nibabel")
    pkg = types.ModuleType("pyliverlesionseg")
    pkg.__path__ = [str(root / "pyliverlesionseg")]  # package without running its __init__ (pynetdicom etc.)
    sys.modules["pyliverlesionseg"] = pkg
    comps = types.ModuleType("pyliverlesionseg.components")  # skip its __init__ (loss.py imports tensorflow)
    comps.__path__ = [str(root / "pyliverlesionseg" / "components")]
    sys.modules["pyliverlesionseg.components"] = comps
    try:
        general = importlib.import_module("pyliverlesionseg.general")
        sampling = importlib.import_module("pyliverlesionseg.sampling")
        yield general, sampling
    finally:
        for k in [k for k in sys.modules if k == "nibabel" or k.startswith("pyliverlesionseg")]:
            del sys.modules[k]
        sys.modules.update(saved)


class _Layer:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.output_shape = (None, *shape, 1)


class _FakeModel:
    def __init__(self, cfg: UNetConfig) -> None:
        self.cfg = cfg
        self.input_shape = (None, *cfg.input_size, 1)
        self.out = _Layer("main", cfg.output_size)
        self.layers = [_Layer("input_1", cfg.input_size), self.out]
        self.output_names = ["main"]
        self.f = fake_network(cfg)

    def get_layer(self, name: str) -> _Layer:
        return self.out

    def predict(self, X):  # noqa: ANN001, ANN201
        return np.stack([self.f(x[..., 0])[..., None] for x in X[0]])


def run_package(general, sampling, vol: np.ndarray, cfg: UNetConfig, center_sampling: bool) -> np.ndarray:  # noqa: ANN001
    general.get_layers_scales = lambda model: [[Fraction(1)] * 3 for _ in model.layers]
    model = _FakeModel(cfg)
    dvn = general.DeepVoxNet(model, center_sampling=center_sampling)
    loader = sampling.ImageLoader([vol])
    x_creator = sampling.Concat([sampling.ExtractSegment3D2(loader, cfg.input_size)])
    sampler = sampling.ForcedUniformCenterSampler(loader) if center_sampling else sampling.ForcedUniformCoordinateSampler(loader)
    out = dvn.predict(x_creator=x_creator, sampler=sampler, subject_id=0, out_path=None, verbose=False, batch_size=1,
                      auto_recalibration=False, stack_recalibrated=False, output_layer_idx=[0],
                      include_output_layer_name_in_out_path=False, auto_return_first_only=True)
    return np.squeeze(out, -1)


# Warnings of the wheel's own (2020) sources, compiled / imported by the ``package`` fixture.
pytestmark = [
    pytest.mark.filterwarnings("ignore:\"is\" with a literal:SyntaxWarning"),
    pytest.mark.filterwarnings("ignore:Please import `.*` from the `scipy.ndimage` namespace:DeprecationWarning"),
]


@pytest.mark.parametrize(("config", "shape"), [
    *[("lesion", shape) for shape in [(120, 97, 51), (92, 84, 42), (200, 185, 30), (61, 40, 95), (93, 85, 43)]],
    *[("liver", shape) for shape in [(118, 90, 110), (163, 136, 136), (170, 140, 14), (120, 101, 1)]],
])
def test_tiling_and_centred_patch_match_package(package, config, shape) -> None:
    """The lesion stage tiles (``predict_tiled``), the liver stage runs one centred patch (``predict_centred_patch``):
    both equal the package's own ``DeepVoxNet.predict`` with the same network, bit for bit."""
    general, sampling = package
    cfg, ours = {"lesion": (LESION_CONFIG, predict_tiled), "liver": (LIVER_CONFIG, predict_centred_patch)}[config]
    vol = np.random.default_rng(sum(shape)).uniform(-0.5, 0.5, shape).astype(np.float32)
    ref = run_package(general, sampling, vol, cfg, center_sampling=config == "liver")
    got = ours(vol, fake_network(cfg), cfg)
    assert got.shape == shape and np.isfinite(got).all()  # assert_array_equal treats NaN == NaN
    np.testing.assert_array_equal(got, ref)


def test_restricted_tiling_equals_full_inside_roi() -> None:
    shape = (200, 185, 60)
    rng = np.random.default_rng(5)
    vol = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    roi = np.zeros(shape, bool)
    roi[10:60, 20:70, 5:30] = True  # only the first tiles see it
    full = predict_tiled(vol, fake_network(LESION_CONFIG), LESION_CONFIG)
    stats = TilingStats()
    restricted = predict_tiled(vol, fake_network(LESION_CONFIG), LESION_CONFIG, roi=roi, stats=stats)
    np.testing.assert_array_equal(restricted[roi], full[roi])
    assert stats.n_skipped_outside_roi > 0  # the restriction really skipped tiles ...
    changed = restricted != full
    assert changed.any() and not changed[roi].any() and np.all(restricted[changed] == 0.0)  # ... set to 0
