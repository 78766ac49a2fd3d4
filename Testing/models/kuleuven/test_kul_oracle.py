"""Oracle: the ORIGINAL Keras architecture (Keras 3, torch backend) vs the PyTorch port.

* The pyliverlesionseg 0.3 wheel comes from the ``kul_wheel`` fixture (``pip download`` once into
  the test-download cache, SHA-256 checked; nothing is installed).
* ``create_unet_like_model`` is the wheel's own source, executed with its five Keras-2 import lines
  rewritten (``kul_keras2_compat.py``); its normalisation ``Lambda`` reduces in float64.
* The Keras model loads the HDF5 with Keras' own topological legacy loader
  (``model.load_weights``), independent of ``convert.keras_h5_to_state_dict``'s name-based mapping.

What is compared, at which size:

* ``test_original_architecture_at_published_size``: the original is *built* (symbolically, no
  forward pass, about 1 s) with the published output sizes, liver 163x136x136 and lesion 92x84x42.
  Its input / output shapes must equal our ``UNetConfig`` (189x162x162 and 180x172x86 from
  ``infer_sizes``), its ``Conv3D`` layers must be our ``conv_specs`` in order, and the kernels Keras'
  loader puts into them must equal the ones our converter reads.
* ``test_*_probabilities``: a forward pass of both models at the published size needs about 12.8 GB
  and 49 s (liver) and 5 GB and 30-40 s per patch (lesion) on 2 CPU cores - too much for CI.  The
  probabilities are therefore compared at smaller output sizes that the original architecture
  accepts: same layers, same weights, only the patch is smaller (all sizes are ``(x, y, z)``;
  different per axis, so an axis mix-up cannot pass):

  - liver 82x55x28 from a 108x81x54 patch (coarsest level 4x3x2 voxels), one structured patch;
  - lesion 20x12x10 from a 108x100x54 patch, one structured and one uniform-random patch.

  Our model is the same ``UNetConfig`` with only ``output_size`` replaced
  (``dataclasses.replace``); the Keras model's shapes must equal its ``input_size`` /
  ``output_size``.  Pass: max |p_keras - p_torch| <= 1e-3 and the Keras output is not degenerate
  (it spans at least 0.5 in probability, so a constant output cannot agree by accident).
  The port at the published sizes is shape-checked in ``test_kul_networks.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from LiverTumorSegLib.models.kuleuven.config import LESION_CONFIG, LIVER_CONFIG, UNetConfig, conv_specs
from LiverTumorSegLib.models.kuleuven.convert import keras_h5_to_state_dict
from LiverTumorSegLib.models.kuleuven.networks import build_model
from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.models.wheel_source import read_member

TOLERANCE = 1e-3
MIN_OUTPUT_RANGE = 0.5  # max(p) - min(p) of the Keras output on every patch

# Arguments exactly as cnn_liver_lesion_seg_CT_MR_functions.py (pyliverlesionseg 0.3) passes them.
LIVER_ARGS = dict(
    number_input_features=1,
    subsample_factors_per_pathway=[(1, 1, 1), (3, 3, 3), (9, 9, 9), (27, 27, 27)],
    kernel_sizes_per_pathway=[
        [[(3, 3, 1), (3, 3, 3)], [(3, 3, 3), (3, 3, 1)]],
        [[(3, 3, 1), (3, 3, 3)], [(3, 3, 3), (3, 3, 1)]],
        [[(3, 3, 1), (3, 3, 3)], [(3, 3, 3), (3, 3, 1)]],
        [[(3, 3, 3), (3, 3, 3)], []],
    ],
    number_features_per_pathway=[[[20, 40], [40, 20]], [[40, 80], [80, 40]], [[80, 160], [160, 80]], [[160, 160], []]],
    output_size=[163, 136, 136],
    padding="same",
    upsampling="linear",
    mask_output=False,
    l2_reg=1e-5,
)
LESION_ARGS = dict(
    number_input_features=1,
    subsample_factors_per_pathway=[(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8)],
    kernel_sizes_per_pathway=[
        [[(3, 3, 1), (3, 3, 3)], [(3, 3, 3), (3, 3, 1)]],
        [[(3, 3, 1), (3, 3, 3)], [(3, 3, 3), (3, 3, 1)]],
        [[(3, 3, 1), (3, 3, 3)], [(3, 3, 3), (3, 3, 1)]],
        [[(3, 3, 1), (3, 3, 3)], []],
    ],
    number_features_per_pathway=[[[20, 40], [40, 20]], [[40, 80], [80, 40]], [[80, 160], [160, 80]], [[160, 160], []]],
    output_size=[92, 84, 42],
    padding="valid",
    upsampling="copy",
    mask_output=False,
    residual_connections=True,
    l2_reg=1e-5,
)

# Reduced sizes for the probability comparison (see the module docstring).
LIVER_SMALL = dataclasses.replace(LIVER_CONFIG, output_size=(82, 55, 28))
LESION_SMALL = dataclasses.replace(LESION_CONFIG, output_size=(20, 12, 10))

# Keras' legacy HDF5 loader converts h5py datasets with np.array(), which numpy 2 flags.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

MODELS = {
    "liver": (LIVER_ARGS, LIVER_CONFIG, "kuleuven-liver-ct"),
    "lesion": (LESION_ARGS, LESION_CONFIG, "kuleuven-lesion-ct"),
}


@pytest.fixture(scope="module")
def original_create(kul_wheel, keras_torch):  # noqa: ANN001, ANN201
    """The wheel's own ``create_unet_like_model`` (Keras 3, torch backend)."""
    from kul_keras2_compat import load_original_create_unet_like_model

    with zipfile.ZipFile(kul_wheel) as zf:
        text = zf.read("pyliverlesionseg/architectures/unet_generalized.py").decode("utf-8")
    return load_original_create_unet_like_model(text)


def structured_patch(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """CT-like normalised patch in [-0.5, 0.5]: air outside a body ellipse, fat/soft tissue, a
    bright 'organ', a few dark 'lesions', bone-like bright rim, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(-1.0, 1.0, s) for s in shape], indexing="ij")
    body = (g[0] / 0.95) ** 2 + (g[1] / 0.8) ** 2 < 1.0
    organ = ((g[0] + 0.25) / 0.5) ** 2 + ((g[1] - 0.1) / 0.4) ** 2 + (g[2] / 0.7) ** 2 < 1.0
    x = np.full(shape, -0.5, np.float32)
    x[body] = -0.2
    x[organ] = 0.15
    for _ in range(4):
        c = rng.uniform(-0.5, 0.5, 3)
        r = rng.uniform(0.05, 0.15)
        x[((g[0] - c[0]) ** 2 + (g[1] - c[1]) ** 2 + (g[2] - c[2]) ** 2) < r**2] = -0.05
    rim = (g[0] / 0.95) ** 2 + (g[1] / 0.8) ** 2 > 0.9
    x[rim] = np.where(body, 0.5, -0.5)[rim]
    x += rng.normal(0.0, 0.03, shape).astype(np.float32)
    return np.clip(x, -0.5, 0.5).astype(np.float32)


def random_patch(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, shape).astype(np.float32)


def _original_model(original_create, args: dict, cfg: UNetConfig, model_id: str, wheel: Path, tmp_path: Path):  # noqa: ANN001, ANN202
    """The original Keras model for ``cfg.output_size`` with the HDF5 weights of manifest model ``model_id``, both
    checksums checked (Keras' own loader)."""
    import keras

    entry = load_manifest()[model_id]
    h5_path = tmp_path / entry.pypi_wheel["member"].rsplit("/", 1)[-1]
    h5_path.write_bytes(read_member(entry, wheel))
    keras.backend.clear_session()
    with contextlib.redirect_stdout(io.StringIO()):  # the original prints its size tables
        kmodel = original_create(verbose=False, **{**args, "output_size": list(cfg.output_size)})
    assert tuple(kmodel.input_shape) == (None, *cfg.input_size, 1)
    assert tuple(kmodel.output_shape) == (None, *cfg.output_size, 1)
    kmodel.load_weights(str(h5_path))  # Keras' own topological HDF5 loader
    return kmodel, h5_path


@pytest.mark.parametrize("which", ["liver", "lesion"])
def test_original_architecture_at_published_size(original_create, kul_wheel, tmp_path, which) -> None:
    """Published sizes (liver 189x162x162 -> 163x136x136, lesion 180x172x86 -> 92x84x42): shapes,
    convolution list and loaded kernels of the original equal ours.  No forward pass."""
    import keras

    args, cfg, member = MODELS[which]
    assert list(cfg.output_size) == args["output_size"]  # our config is the published one
    kmodel, h5_path = _original_model(original_create, args, cfg, member, kul_wheel, tmp_path)
    sd = keras_h5_to_state_dict(h5_path.read_bytes(), cfg, name=h5_path.name)
    specs = conv_specs(cfg)
    # Keras 3 names layers conv3d, conv3d_1, ... (not Keras 2's conv3d_1, ...), so pair Keras' layers
    # in model order with our creation-order specs.
    kconvs = [layer for layer in kmodel.layers if layer.__class__.__name__ == "Conv3D"]
    assert len(kconvs) == len(specs)
    for layer, spec in zip(kconvs, specs, strict=True):
        kk, kb = (keras.ops.convert_to_numpy(w) for w in layer.weights)
        assert kk.shape == spec.keras_kernel_shape, (layer.name, spec)
        np.testing.assert_array_equal(kk.transpose(4, 3, 0, 1, 2), sd[f"convs.{spec.name}.weight"])
        np.testing.assert_array_equal(kb, sd[f"convs.{spec.name}.bias"])


def _compare_probabilities(original_create, wheel: Path, tmp_path: Path, which: str, cfg: UNetConfig,  # noqa: ANN001
                           patches: list[np.ndarray], record_property) -> None:  # noqa: ANN001
    import keras

    args, _, member = MODELS[which]
    kmodel, h5_path = _original_model(original_create, args, cfg, member, wheel, tmp_path)
    tmodel = build_model(cfg, keras_h5_to_state_dict(h5_path.read_bytes(), cfg, name=h5_path.name))
    worst = 0.0
    for i, patch in enumerate(patches):
        assert patch.shape == cfg.input_size
        with torch.no_grad():
            t0 = time.perf_counter()
            pk = keras.ops.convert_to_numpy(kmodel([patch[None, ..., None]], training=False))[0, ..., 0]
            t1 = time.perf_counter()
            pt = tmodel(torch.from_numpy(patch)[None, None]).numpy()[0, 0]
            t2 = time.perf_counter()
        assert pk.shape == pt.shape == cfg.output_size
        spread = float(pk.max() - pk.min())
        assert spread >= MIN_OUTPUT_RANGE, f"{which} patch {i}: Keras output is nearly constant ({spread:.3g})"
        diff = float(np.max(np.abs(pk.astype(np.float64) - pt.astype(np.float64))))
        worst = max(worst, diff)
        print(f"{which} {cfg.input_size}->{cfg.output_size} patch {i}: max|dp|={diff:.3g}, keras {t1 - t0:.1f}s, "
              f"torch {t2 - t1:.1f}s, p range {pk.min():.3g}..{pk.max():.3g}, fg(keras)={float((pk > 0.5).mean()):.4f}, "
              f"thresholded voxels differing={int(((pk > 0.5) != (pt > 0.5)).sum())}")
        record_property(f"{which}_patch{i}_max_abs_diff", diff)
    assert worst <= TOLERANCE, f"{which}: max |prob difference| {worst} > {TOLERANCE}"


def test_liver_probabilities(original_create, kul_wheel, tmp_path, record_property) -> None:
    """Liver, output 82x55x28 from one structured 108x81x54 patch (the liver stage runs one patch)."""
    patches = [structured_patch(LIVER_SMALL.input_size, seed=1)]
    _compare_probabilities(original_create, kul_wheel, tmp_path, "liver", LIVER_SMALL, patches, record_property)


@pytest.mark.slow  # about 18 s on 2 busy CPU cores (two patches)
def test_lesion_probabilities(original_create, kul_wheel, tmp_path, record_property) -> None:
    """Lesion, output 20x12x10 from a structured and a uniform-random 108x100x54 patch."""
    patches = [structured_patch(LESION_SMALL.input_size, seed=2), random_patch(LESION_SMALL.input_size, seed=3)]
    _compare_probabilities(original_create, kul_wheel, tmp_path, "lesion", LESION_SMALL, patches, record_property)


def test_reduced_sizes_are_what_the_docstring_says() -> None:
    assert (LIVER_SMALL.input_size, LIVER_SMALL.output_size) == ((108, 81, 54), (82, 55, 28))
    assert (LESION_SMALL.input_size, LESION_SMALL.output_size) == ((108, 100, 54), (20, 12, 10))
