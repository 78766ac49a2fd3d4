"""Staging features: slice choice, SAM / MedSAM preprocessing, the ViT encoder (seeded random init or a
checkpoint), pooling, measured lesion features, progress and cancel."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.core import measurements
from LiverTumorSegLib.models.registry import ModelNotAvailableError
from TNMStagingLib.core import features

# A small configuration of the real ImageEncoderViT class (fast tests); VIT_B is the real one.
TINY = features.EncoderSpec(
    "tiny",
    img_size=128,
    embed_dim=32,
    depth=2,
    heads=2,
    global_attn_indexes=(1,),
    out_chans=16,
    window_size=4,
)
SPACING = (0.8, 0.8, 2.5)


def _case(tumor_hu: float = 100.0, shift: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """CT (z, y, x) = (12, 40, 50) with liver at 60 HU and two tumors at ``tumor_hu`` on slices 4-7."""
    labels = np.zeros((12, 40, 50), np.uint8)
    labels[2:10, 5:35, 5:45] = 1
    labels[4:8, 10 + shift : 20 + shift, 10:22] = 2  # 10 x 12 voxels in plane, 4 slices
    labels[5:7, 26:30, 34:38] = 2
    ct = np.full(labels.shape, -900.0, np.float32)
    ct[labels == 1] = 60.0
    ct[labels == 2] = tumor_hu
    label_image = sitk.GetImageFromArray(labels)
    label_image.SetSpacing(SPACING)
    label_image.SetOrigin((-20.0, 10.0, 5.0))
    ct_image = sitk.GetImageFromArray(ct)
    ct_image.CopyInformation(label_image)
    return ct_image, label_image


def test_vit_b_spec_is_the_published_architecture():
    assert (features.VIT_B.img_size, features.VIT_B.embed_dim, features.VIT_B.depth) == (1024, 768, 12)
    assert (features.VIT_B.heads, features.VIT_B.global_attn_indexes, features.VIT_B.out_chans) == (
        12,
        (2, 5, 8, 11),
        256,
    )
    assert features.VIT_B.grid == 64 and features.VIT_B.input_mode == "sam"
    assert features.MEDSAM_VIT_B.input_mode == "medsam" and features.MEDSAM_VIT_B.embed_dim == 768
    config = features.FeatureConfig(encoder=TINY, pooling="mean_max")
    assert features.FeatureConfig.from_dict(config.to_dict()) == config


def test_select_slices_prefers_tumor_then_liver_and_samples_evenly():
    labels = np.zeros((20, 8, 8), np.uint8)
    labels[1:19, 2:6, 2:6] = 1
    labels[3:13, 3:5, 3:5] = 2  # tumor on slices 3..12
    image = sitk.GetImageFromArray(labels)
    assert features.select_slices(image, 4) == [3, 6, 9, 12]
    assert features.select_slices(image, 20) == list(range(3, 13))
    labels[labels == 2] = 1
    assert features.select_slices(sitk.GetImageFromArray(labels), 3) == [
        1,
        9,
        18,
    ]  # linspace 0..17 -> 0, 8.5 (rounds to even), 17
    with pytest.raises(ValueError, match="neither tumor"):
        features.select_slices(sitk.GetImageFromArray(np.zeros((3, 4, 4), np.uint8)), 3)


def test_select_slices_follows_the_axis_closest_to_superior_inferior():
    labels = np.zeros((6, 7, 9), np.uint8)  # (z, y, x); image x is the patient S-I axis here
    labels[:, :, 5:7] = 2
    image = sitk.GetImageFromArray(labels)
    image.SetDirection((0, 0, 1, 0, 1, 0, 1, 0, 0))
    assert features.select_slices(image, 8) == [5, 6]
    ct = sitk.GetImageFromArray(np.arange(labels.size, dtype=np.float32).reshape(labels.shape))
    ct.CopyInformation(image)
    slices = features.axial_slices_hu(ct, [5])
    assert slices.shape == (1, 6, 7)
    np.testing.assert_array_equal(slices[0], sitk.GetArrayFromImage(ct)[:, :, 5])


def test_sam_preprocessing_resizes_longest_side_normalizes_and_pads():
    slices = np.full((2, 40, 50), 40.0, np.float32)  # window centre: 127.5 of 255
    slices[1] = -1000.0  # below the window: 0
    x = features.preprocess_slices(slices, TINY, (-135.0, 215.0))
    assert x.shape == (2, 3, 128, 128) and x.dtype == torch.float32
    mean, std = np.array(features.SAM_PIXEL_MEAN), np.array(features.SAM_PIXEL_STD)
    content_rows = round(40 * 128 / 50)  # ResizeLongestSide: 50 -> 128, 40 -> 102
    np.testing.assert_allclose(x[0, :, :content_rows].mean(dim=(1, 2)), (127.5 - mean) / std, atol=1e-4)
    np.testing.assert_allclose(x[1, :, 50, 60], (0.0 - mean) / std, atol=1e-5)
    assert torch.all(x[:, :, content_rows:, :] == 0)  # padded bottom rows, as Sam.preprocess pads
    # The same slice gives the same input whatever the batch (segment-anything's apply_image_torch does not).
    assert torch.equal(features.preprocess_slices(slices[:1], TINY), x[:1])


def test_medsam_preprocessing_is_unit_range_square_without_mean_std():
    from dataclasses import replace

    slices = np.linspace(-300, 400, 40 * 50, dtype=np.float32).reshape(1, 40, 50)
    x = features.preprocess_slices(slices, replace(TINY, input_mode="medsam"), (-135.0, 215.0))
    assert x.shape == (1, 3, 128, 128)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x[0, 0], x[0, 2])
    with pytest.raises(ValueError, match="input mode"):
        features.preprocess_slices(slices, replace(TINY, input_mode="rgb"))


def test_random_init_encoder_is_seeded_labelled_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = features.build_encoder(TINY, seed=3), features.build_encoder(TINY, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    c = features.build_encoder(TINY, seed=4)
    weight = "blocks.0.mlp.lin1.weight"
    assert torch.equal(a.module.state_dict()[weight], b.module.state_dict()[weight])
    assert not torch.equal(a.module.state_dict()[weight], c.module.state_dict()[weight])
    assert a.weights == features.RANDOM_INIT and a.random_init and a.seed == 3
    assert type(a.module).__name__ == "ImageEncoderViT" and not a.module.training


def test_checkpoint_is_loaded_strictly_and_identified_by_sha256(tmp_path):
    source = features.build_encoder(TINY, seed=7).module.state_dict()
    whole_sam = {f"image_encoder.{k}": v for k, v in source.items()} | {"mask_decoder.x": torch.zeros(2)}
    path = tmp_path / "sam_tiny.pth"
    torch.save(whole_sam, path)
    loaded = features.build_encoder(TINY, path)
    assert loaded.weights == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.random_init
    for key, value in source.items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    from dataclasses import replace

    with pytest.raises(ValueError, match="does not fit this encoder"):
        features.build_encoder(replace(TINY, embed_dim=64), path)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        features.build_encoder(TINY, tmp_path / "junk.pth")


def test_sam_checkpoint_comes_from_the_manifest_and_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVERTUMOR_MODEL_DIR", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="sam_vit_b_01ec64.pth"):
        features.resolve_checkpoint(features.VIT_B)


def test_measured_features_match_the_lesion_table():
    ct, labels = _case(tumor_hu=100.0)
    values = features.measured_features(ct, labels)
    voxel_ml = np.prod(SPACING) / 1000.0
    table = measurements.measure_labelmap(labels)
    assert values["tumor_count"] == 2
    assert values["tumor_volume_ml"] == pytest.approx((10 * 12 * 4 + 4 * 4 * 2) * voxel_ml)
    assert values["largest_tumor_volume_ml"] == pytest.approx(10 * 12 * 4 * voxel_ml)
    assert values["largest_diameter_mm"] == pytest.approx(table.lesions[0].longest_axial_diameter_mm)
    assert values["sum_diameters_mm"] == pytest.approx(
        sum(les.longest_axial_diameter_mm for les in table.lesions)
    )
    assert values["liver_volume_ml"] == pytest.approx(8 * 30 * 40 * voxel_ml)
    assert values["tumor_burden"] == pytest.approx(values["tumor_volume_ml"] / values["liver_volume_ml"])
    assert (values["tumor_hu_mean"], values["tumor_hu_std"]) == (100.0, 0.0)
    assert (values["liver_hu_mean"], values["liver_hu_std"]) == (60.0, 0.0)
    assert list(values) == list(features.MEASURED_FEATURES)


def test_measured_features_without_tumor_have_nan_tumor_hu():
    ct, labels = _case()
    labels = sitk.ChangeLabel(labels, {2: 1})
    values = features.measured_features(ct, labels)
    assert (
        values["tumor_count"] == 0 and values["tumor_burden"] == 0.0 and values["largest_diameter_mm"] == 0.0
    )
    assert np.isnan(values["tumor_hu_mean"]) and np.isnan(values["tumor_hu_std"])


def test_case_features_pool_average_and_record_provenance():
    ct, labels = _case()
    config = features.FeatureConfig(encoder=TINY, max_slices=3)
    encoder = features.build_encoder(TINY, seed=0)
    calls = []
    result = features.case_features(
        ct, labels, config, encoder, batch_size=2, device="cpu", progress=lambda f, m: calls.append(f)
    )
    assert list(result.values) == config.feature_names() and len(config.image_feature_names()) == 16
    assert result.slices == [4, 6, 7]  # tumor slices 4..7, linspace 0, 1.5 (-> 2), 3
    assert (result.encoder, result.weights, result.input_mode) == ("tiny", "random-init", "sam")
    assert calls == sorted(calls) and calls[-1] == 1.0 and len(calls) >= 3
    # The average over slices of each slice's grid average, computed by hand.
    images = features.preprocess_slices(features.axial_slices_hu(ct, result.slices), TINY)
    with torch.inference_mode():
        expected = encoder.module(images).mean(dim=(-2, -1)).mean(dim=0).numpy()
    image_values = np.array([result.values[n] for n in config.image_feature_names()])
    np.testing.assert_allclose(image_values, expected, rtol=1e-4, atol=1e-5)
    other = features.case_features(*_case(tumor_hu=20.0), config, encoder, device="cpu")
    assert not np.allclose(image_values, [other.values[n] for n in config.image_feature_names()])


def test_mean_max_pooling_and_measured_only():
    ct, labels = _case()
    config = features.FeatureConfig(encoder=TINY, max_slices=2, pooling="mean_max")
    result = features.case_features(ct, labels, config, features.build_encoder(TINY, seed=1), device="cpu")
    means = np.array([result.values[f"img_mean_{c:03d}"] for c in range(16)])
    maxima = np.array([result.values[f"img_max_{c:03d}"] for c in range(16)])
    assert len(config.image_feature_names()) == 32 and np.all(maxima >= means)
    only = features.case_features(ct, labels, features.FeatureConfig(encoder=TINY, image_features=False))
    assert list(only.values) == list(features.MEASURED_FEATURES) and only.weights == "none"
    with pytest.raises(ValueError, match="encoder"):
        features.case_features(ct, labels, config, None)


def test_cancel_and_grid_mismatch():
    ct, labels = _case()
    config = features.FeatureConfig(encoder=TINY)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(features.FeatureExtractionCancelled):
        features.case_features(ct, labels, config, features.build_encoder(TINY, seed=0), cancel=cancel)
    shifted = sitk.Image(labels)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="origin"):
        features.measured_features(ct, shifted)


@pytest.mark.slow
def test_full_vit_b_random_init_embeds_one_slice_to_256x64x64():
    encoder = features.build_encoder(features.VIT_B, seed=0)
    assert sum(p.numel() for p in encoder.module.parameters()) == 89_670_912
    ct, labels = _case()
    images = features.preprocess_slices(features.axial_slices_hu(ct, [5]), features.VIT_B)
    assert images.shape == (1, 3, 1024, 1024)
    embedding = features.encode_batch(encoder, images, torch.device("cpu"))
    assert embedding.shape == (1, 256, 64, 64) and torch.isfinite(embedding).all()
    pooled = features.pool_embeddings(embedding, "mean_max")
    assert pooled.shape == (1, 512)
