"""Training: the thesis recipe runs, logs, checkpoints with its manifest entry, resumes and exports."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib import training
from LiverTumorSegLib.datasets import list_msd_cases, split_cases
from LiverTumorSegLib.model_manifest import ModelEntry


def write_blob_dataset(root, n_cases=3):
    """Tiny MSD-layout cases: a bright ellipsoid 'liver' (label 1) with a dark 'tumor' (label 2) inside."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:16, 0:32, 0:32]
    for case in range(n_cases):
        cx = 14 + case
        liver = ((x - cx) / 10) ** 2 + ((y - 16) / 9) ** 2 + ((z - 8) / 6) ** 2 <= 1
        tumor = ((x - cx) / 3) ** 2 + ((y - 16) / 3) ** 2 + ((z - 8) / 2) ** 2 <= 1
        ct = rng.normal(-50, 10, liver.shape) + 160 * liver - 80 * tumor
        labels = liver.astype(np.uint8) + tumor.astype(np.uint8)
        for folder, array, pixel in (("imagesTr", ct, np.int16), ("labelsTr", labels, np.uint8)):
            image = sitk.GetImageFromArray(array.astype(pixel))
            image.SetSpacing((2.0, 2.0, 4.0))
            sitk.WriteImage(image, str(root / folder / f"case{case}.nii.gz"))
    return root


@pytest.fixture(scope="module")
def blob_cases(tmp_path_factory):
    return list_msd_cases(write_blob_dataset(tmp_path_factory.mktemp("blobs")))


def tiny_config(stage, epochs):
    return training.TrainConfig(stage=stage, spacing_mm=(2.0, 2.0, 4.0), roi_size=(16, 16, 8), init_filters=8,
                                max_epochs=epochs, samples_per_volume=1, batch_size=1, val_interval=1,
                                model_id=f"test-{stage}", demo_only=True, training_data="blobs")


@pytest.mark.parametrize("stage", ["liver", "tumor"])
def test_training_logs_checkpoints_and_resumes(stage, blob_cases, tmp_path):
    train_cases, val_cases = split_cases(blob_cases, 0.34, seed=0)
    first = training.train(tiny_config(stage, 2), train_cases, val_cases, tmp_path, log=lambda _: None)
    assert first["epochs_run"] == 2
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r["train_loss"])) and 0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    entry = ModelEntry.from_dict(state["manifest_entry"])
    assert entry.task == stage and entry.demo_only and entry.roi_size == (16, 16, 8)
    assert entry.input_channels == (("ct",) if stage == "liver" else ("ct", "liver_mask"))
    # resume: two more epochs continue from epoch 2 with the same history
    resumed = training.train(tiny_config(stage, 4), train_cases, val_cases, tmp_path, log=lambda _: None)
    assert resumed["epochs_run"] == 4
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert len(torch.load(tmp_path / "last.pt", weights_only=False)["history"]) == 4


def test_resuming_a_finished_run_trains_nothing_and_takes_the_new_plateau_patience(blob_cases, tmp_path):
    train_cases, val_cases = split_cases(blob_cases, 0.34, seed=0)
    config = tiny_config("liver", 2)
    training.train(config, train_cases, val_cases, tmp_path, log=lambda _: None)
    before = (tmp_path / "last.pt").read_bytes()
    messages = []
    again = training.train(config, train_cases, val_cases, tmp_path, log=messages.append)
    assert again["epochs_run"] == 2 and (tmp_path / "last.pt").read_bytes() == before
    assert any("nothing left to train" in m for m in messages)
    # a longer run resumes with the configured plateau patience, not the one stored in the checkpoint
    longer = training.TrainConfig(**{**config.__dict__, "max_epochs": 3, "plateau_patience": 1})
    training.train(longer, train_cases, val_cases, tmp_path, log=lambda _: None)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["scheduler"]["patience"] == 1


def test_export_writes_weights_with_their_checksum(blob_cases, tmp_path):
    train_cases, val_cases = split_cases(blob_cases, 0.34, seed=0)
    result = training.train(tiny_config("liver", 1), train_cases, val_cases, tmp_path, log=lambda _: None)
    entry = training.export_weights(result["checkpoint"], tmp_path / "demo_liver.pt")
    data = (tmp_path / "demo_liver.pt").read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size_bytes"] == len(data)
    saved = torch.load(tmp_path / "demo_liver.pt", weights_only=True)
    network = training.build_network(tiny_config("liver", 1))
    network.load_state_dict(saved["state_dict"])  # the exported weights fit the declared network
    assert ModelEntry.from_dict(entry).file_name == "demo_liver.pt"


def test_tumor_transforms_crop_to_the_liver_and_stack_the_mask(blob_cases):
    config = tiny_config("tumor", 1)
    item = training.build_transforms(config, training=False)(blob_cases[0])
    image, label = item["image"], item["label"]
    assert image.shape[0] == 2 and label.shape[0] == 1
    # the liver mask channel is binary and covers the tumor target
    mask = image[1].numpy()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert np.all(mask[label[0].numpy() > 0] == 1.0)
    # cropped to the liver plus a 10 mm margin: smaller than the 32x32x16 input
    assert image.shape[1] < 32


def test_cancel_stops_training(blob_cases, tmp_path):
    import threading

    cancel = threading.Event()
    cancel.set()
    train_cases, val_cases = split_cases(blob_cases, 0.34, seed=0)
    with pytest.raises(training.TrainingCancelled):
        training.train(tiny_config("liver", 3), train_cases, val_cases, tmp_path, log=lambda _: None, cancel=cancel)


def test_liver_mask_jitter_dilates_or_erodes_only_the_mask_channel():
    from LiverTumorSegLib.train_transforms import RandChannelMorphologyd

    image = torch.zeros(2, 20, 20, 20)
    image[0] = torch.linspace(0, 1, 20)[:, None, None]
    image[1, 5:15, 5:15, 5:15] = 1.0  # a 10-voxel cube
    jitter = RandChannelMorphologyd("image", channel=1, max_voxels=2, prob=1.0).set_random_state(0)
    seen = set()
    for _ in range(20):
        out = jitter({"image": image})["image"]
        assert torch.equal(out[0], image[0]), "the CT channel changed"
        assert set(out[1].unique().tolist()) <= {0.0, 1.0}
        edge = round(float(out[1].sum()) ** (1 / 3))
        assert edge ** 3 == int(out[1].sum())  # a cube kernel keeps a cube a cube
        seen.add(edge)
    assert seen == {6, 8, 12, 14}  # eroded / dilated by 1 or 2 voxels, each drawn
    assert torch.equal(RandChannelMorphologyd("image", 1, 2, prob=0.0)({"image": image})["image"], image)
    with pytest.raises(ValueError):
        RandChannelMorphologyd("image", 1, 0)


def test_the_tumor_recipe_jitters_the_liver_mask_only_when_asked(blob_cases):
    from LiverTumorSegLib.train_transforms import RandChannelMorphologyd

    def has_jitter(config):
        return any(isinstance(t, RandChannelMorphologyd) for t in training.build_transforms(config, True).transforms)

    config = tiny_config("tumor", 1)
    assert not has_jitter(config)  # the thesis recipe
    config.liver_mask_jitter_voxels = 2
    assert has_jitter(config)
    assert not has_jitter(training.TrainConfig(stage="liver", liver_mask_jitter_voxels=2))
    item = training.build_transforms(config, training=True)(blob_cases[0])[0]
    assert set(np.unique(item["image"][1].numpy())) <= {0.0, 1.0}
