"""Training: the thesis recipe runs, logs, checkpoints with its manifest entry, resumes and exports."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import replace as dataclasses_replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.models.manifest import ModelEntry
from LiverTumorSegLib.training import train as training
from LiverTumorSegLib.training.datasets import list_msd_cases, split_cases


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



def test_a_warm_restart_resets_the_learning_rate_and_the_plateau_count_only_when_resuming(blob_cases, tmp_path):
    train_cases, val_cases = split_cases(blob_cases, 0.34, seed=0)
    first = training.train(tiny_config("tumor", 2), train_cases, val_cases, tmp_path, restart_learning_rate=5e-5,
                           log=lambda _: None)
    assert first["resumed_after_epoch"] is None and not first["learning_rate_restarted"]
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["history"][0]["lr"] == 1e-4  # nothing to restart in a fresh run
    # make the stored run look as if the plateau schedule had cut the rate and counted bad validations
    for group in state["optimizer"]["param_groups"]:
        group["lr"] = 1e-6
    state["scheduler"]["num_bad_epochs"] = 7
    torch.save(state, tmp_path / "last.pt")
    messages = []
    resumed = training.train(tiny_config("tumor", 3), train_cases, val_cases, tmp_path, restart_learning_rate=5e-5,
                             log=messages.append)
    assert resumed["resumed_after_epoch"] == 1 and resumed["epochs_run"] == 3 and resumed["learning_rate_restarted"]
    after = torch.load(tmp_path / "last.pt", weights_only=False)
    assert after["history"][-1]["epoch"] == 2 and after["history"][-1]["lr"] == 5e-5
    assert after["scheduler"]["num_bad_epochs"] <= 1  # counted afresh: one validation since the restart
    assert any("learning rate restarted at 5e-05" in m for m in messages)


def test_init_weights_fine_tunes_from_another_run_with_a_fresh_schedule(blob_cases, tmp_path):
    from LiverTumorSegLib.models.networks import NetworkError

    train_cases, val_cases = split_cases(blob_cases, 0.34, seed=0)
    source = training.train(tiny_config("tumor", 2), train_cases, val_cases, tmp_path / "source", log=lambda _: None)
    exported = tmp_path / "source.pt"
    training.export_weights(source["checkpoint"], exported)
    frozen = dataclasses_replace(tiny_config("tumor", 1), learning_rate=0.0, weight_decay=0.0)  # weights stay put
    messages = []
    tuned = training.train(frozen, train_cases, val_cases, tmp_path / "tuned", init_weights=exported,
                           log=messages.append)
    assert tuned["initialised_from"] == str(exported) and tuned["resumed_after_epoch"] is None
    start = torch.load(exported, weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "tuned" / "last.pt", weights_only=False)
    assert all(torch.equal(after["state_dict"][k], start[k]) for k in start)
    assert after["best_epoch"] == 0 and [row["epoch"] for row in after["history"]] == [0]  # a new run's schedule
    assert any("starting from the weights in" in m for m in messages)
    # a second call resumes the new run; the initial weights no longer apply
    again = training.train(dataclasses_replace(frozen, max_epochs=2), train_cases, val_cases, tmp_path / "tuned",
                           init_weights=exported, log=messages.append)
    assert again["resumed_after_epoch"] == 0 and again["initialised_from"] is None
    assert any("do not apply" in m for m in messages)
    # weights of another network (the liver stage has one input channel) are refused, naming the file
    liver = training.train(tiny_config("liver", 1), train_cases, val_cases, tmp_path / "liver", log=lambda _: None)
    with pytest.raises(NetworkError, match="best.pt"):
        training.train(tiny_config("tumor", 1), train_cases, val_cases, tmp_path / "wrong",
                       init_weights=liver["checkpoint"], log=lambda _: None)


class _BrightIsForeground(torch.nn.Module):
    """A stand-in network: foreground (liver or tumor) wherever the CT channel is above 0.9."""

    def forward(self, x):
        tumor = (x[:, :1] > 0.9).float() * 2 - 1
        return torch.cat([-tumor, tumor], dim=1)


def test_tumor_validation_scores_what_the_cascade_keeps():
    config = dataclasses_replace(tiny_config("tumor", 1), spacing_mm=(2.0, 2.0, 2.5), val_min_tumor_ml=0.1)
    image = torch.zeros(2, 16, 16, 8)
    image[1, 2:14, 2:14, 1:7] = 1.0  # liver-mask channel
    image[0, 4:6, 4:6, 2:4] = 1.0  # 8 voxels = 0.08 mL: below the cascade's 0.1 mL, dropped
    image[0, 0, 0:2, 0:2] = 1.0  # outside the liver mask: dropped
    tumor_free = {"image": image, "label": torch.zeros(1, 16, 16, 8)}
    assert training.validate(_BrightIsForeground(), [tumor_free], config, "cpu") == 1.0
    assert training.validate(_BrightIsForeground(), [tumor_free], dataclasses_replace(config, val_min_tumor_ml=0.0),
                             "cpu") == 0.0  # without the volume rule the 8 stray voxels decide
    image = image.clone()
    image[0, 8:12, 8:12, 2:5] = 1.0  # 48 voxels = 0.48 mL inside the liver: kept
    label = torch.zeros(1, 16, 16, 8)
    label[0, 8:12, 8:12, 2:5] = 1.0
    assert training.validate(_BrightIsForeground(), [{"image": image, "label": label}], config, "cpu") == 1.0


def test_liver_validation_scores_what_the_cascade_keeps():
    """Largest component, holes filled per axial slice: an axial tube through the liver (open at both ends, so
    no 3D hole) is filled only if the slices are cut across model-space z, the axis the cascade treats as axial."""
    config = dataclasses_replace(tiny_config("liver", 1), spacing_mm=(2.0, 2.0, 2.5))
    liver = torch.zeros(1, 16, 16, 8)
    liver[0, 2:14, 2:14, 1:7] = 1.0
    image = liver.clone()
    image[0, 7:9, 7:9, :] = 0.0  # an axial tube: a hole in every axial slice
    image[0, 0, 0, 0] = 1.0  # a stray voxel apart from the liver: not the largest component
    case = {"image": image, "label": liver}
    assert training.validate(_BrightIsForeground(), [case], config, "cpu") == 1.0
    cleaned = training.cascade_liver_rules((image > 0.9).long()[None], config)
    assert torch.equal(cleaned[0], liver.long())


def test_validation_uses_the_cascades_minimum_lesion_volume():
    import inspect

    from LiverTumorSegLib.core.cascade import run_cascade

    default = inspect.signature(run_cascade).parameters["min_tumor_ml"].default
    assert training.TrainConfig(stage="tumor").val_min_tumor_ml == default == 0.1


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
    from LiverTumorSegLib.training.transforms import RandChannelMorphologyd

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
    from LiverTumorSegLib.training.transforms import RandChannelMorphologyd

    def has_jitter(config):
        return any(isinstance(t, RandChannelMorphologyd) for t in training.build_transforms(config, True).transforms)

    config = tiny_config("tumor", 1)
    assert not has_jitter(config)  # the thesis recipe
    config.liver_mask_jitter_voxels = 2
    assert has_jitter(config)
    assert not has_jitter(training.TrainConfig(stage="liver", liver_mask_jitter_voxels=2))
    item = training.build_transforms(config, training=True)(blob_cases[0])[0]
    assert set(np.unique(item["image"][1].numpy())) <= {0.0, 1.0}


def blob_liver_model():
    """A thresholding 'liver model' for the blobs (liver about 0.7 after clip-scale, tumor 0.43, body 0.17)."""
    from test_cascade import IntensityBand, entry

    from LiverTumorSegLib.models.networks import LoadedModel

    return LoadedModel(entry("liver", (3.0, 3.0, 3.0), (32, 32, 32)), IntensityBand(0.6, 0.8))


def test_predicted_liver_masks_are_the_cascades_liver_on_each_ct_grid(tmp_path):
    from LiverTumorSegLib.core.cascade import run_cascade
    from LiverTumorSegLib.training.datasets import predicted_masks_folder, write_predicted_liver_masks

    root = write_blob_dataset(tmp_path / "blobs", n_cases=2)
    model, messages = blob_liver_model(), []
    folder = write_predicted_liver_masks(root, model, log=messages.append)
    assert folder == root / predicted_masks_folder(model.entry) and model.entry.id in folder.name
    cases = list_msd_cases(root, folder.name)
    assert len(messages) == 2 and all("liver_mask" in case for case in cases)
    for case in cases:
        ct, mask = sitk.ReadImage(case["image"]), sitk.ReadImage(case["liver_mask"])
        assert (mask.GetSize(), mask.GetOrigin(), mask.GetSpacing(), mask.GetDirection()) == (
            ct.GetSize(), ct.GetOrigin(), ct.GetSpacing(), ct.GetDirection())
        predicted = sitk.GetArrayFromImage(mask)
        expected = sitk.GetArrayFromImage(run_cascade(ct, model, None, device="cpu").labels) > 0
        assert np.array_equal(predicted > 0, expected) and set(np.unique(predicted)) == {0, 1}
        liver = sitk.GetArrayFromImage(sitk.ReadImage(case["label"])) > 0
        assert 2 * np.sum(liver & expected) / (liver.sum() + expected.sum()) > 0.8  # the liver, tumor filled in
    stamps = [p.stat().st_mtime_ns for p in sorted(folder.iterdir())]
    write_predicted_liver_masks(root, model, log=messages.append)  # existing masks are kept
    assert [p.stat().st_mtime_ns for p in sorted(folder.iterdir())] == stamps and len(messages) == 2
    (folder / "case1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="case1.nii.gz has no predicted liver mask"):
        list_msd_cases(root, folder.name)


def test_tumor_training_on_predicted_masks_crops_to_and_stacks_the_given_mask(blob_cases, tmp_path):
    case = dict(blob_cases[0])
    label = sitk.ReadImage(case["label"])
    shifted = sitk.GetArrayFromImage(label) > 0
    shifted = np.roll(shifted, 3, axis=2)  # a 'prediction' 6 mm off the truth along x
    mask = sitk.GetImageFromArray(shifted.astype(np.uint8))
    mask.CopyInformation(label)
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    case["liver_mask"] = str(tmp_path / "mask.nii.gz")

    config = tiny_config("tumor", 1)
    config.liver_mask_input = "predicted"
    item = training.build_transforms(config, training=False)(case)
    truth_item = training.build_transforms(tiny_config("tumor", 1), training=False)(case)
    channel, truth_channel = item["image"][1].numpy(), truth_item["image"][1].numpy()
    assert set(np.unique(channel)) <= {0.0, 1.0}
    assert channel.sum() == pytest.approx(truth_channel.sum(), rel=0.05)  # same liver, moved
    assert not np.array_equal(channel, truth_channel)
    # the target is still the true tumor, whatever the mask; the CT channel is the same image
    assert item["label"].sum() == truth_item["label"].sum() > 0

    def first_x(array):  # lowest x index (RAS, in the crop) of the foreground
        return int(np.nonzero(array)[0].min())

    # the mask channel is the given mask: 3 voxels off the tumor compared with the truth mask
    offset = first_x(channel) - first_x(item["label"][0].numpy())
    truth_offset = first_x(truth_channel) - first_x(truth_item["label"][0].numpy())
    assert abs(offset - truth_offset) == 3
    # and the crop follows it: the tumor sits elsewhere in the crop
    assert first_x(item["label"][0].numpy()) != first_x(truth_item["label"][0].numpy())

    with pytest.raises(ValueError, match="needs a 'liver_mask' file for every case"):
        training.train(config, blob_cases[:2], blob_cases[2:], tmp_path / "run", log=lambda _: None)
    config.liver_mask_input = "guessed"
    with pytest.raises(ValueError, match="liver_mask_input must be one of"):
        training.build_transforms(config, training=False)


def test_train_cli_feeds_the_tumor_stage_a_registered_liver_models_masks(tmp_path, capsys, monkeypatch):
    from LiverTumorSegLib import cli
    from LiverTumorSegLib.cli import train as train_command
    from LiverTumorSegLib.models.manifest import load_manifest
    from LiverTumorSegLib.training.datasets import predicted_masks_folder

    root = write_blob_dataset(tmp_path / "blobs")
    options = ["train", "--stage", "tumor", "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1",
               "--spacing-mm", "2,2,4", "--roi", "16,16,8", "--init-filters", "8", "--samples-per-volume", "1",
               "--batch-size", "1", "--val-fraction", "0.34", "--device", "cpu"]
    configs, train = [], training.train
    monkeypatch.setattr(train_command, "train", lambda config, *a, **k: configs.append(config) or train(config, *a, **k))
    assert cli.main(options + ["--liver-model", "demo-liver-segresnet", "--lesion-balanced-crops"]) == 0
    assert configs[0].lesion_balanced_crops and configs[0].liver_mask_input == "predicted"
    liver_options = [o if o != "tumor" else "liver" for o in options]
    liver_options[liver_options.index("--out") + 1] = str(tmp_path / "liver_run")
    with pytest.raises(SystemExit, match="--lesion-balanced-crops is for the tumor stage"):
        cli.main(liver_options + ["--lesion-balanced-crops"])
    assert not (tmp_path / "liver_run").exists()  # refused before anything was written
    liver = load_manifest()["demo-liver-segresnet"]
    folder = tmp_path / "run" / "predicted_liver_masks" / predicted_masks_folder(liver)
    assert sorted(p.name for p in folder.iterdir()) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    assert not any(p.name.startswith("liversTr") for p in root.iterdir())  # the user's data set is left alone
    assert (tmp_path / "run" / "tumor" / "best.pt").is_file()
    assert "predicted liver mask case0.nii.gz" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a liver model"):
        cli.main(options + ["--liver-model", "sam-vit-b"])
    with pytest.raises(SystemExit, match="unknown liver model 'no-such-model'"):
        cli.main(options + ["--liver-model", "no-such-model"])


def test_the_liver_stage_can_centre_a_share_of_its_patches_on_tumor(blob_cases):
    from monai.transforms import Compose

    def tumor_centred_share(fraction):
        config = tiny_config("liver", 1)
        config.tumor_crop_fraction = fraction
        item = Compose(training._deterministic_transforms(config))(blob_cases[0])
        sampler = training._patch_sampler(config, ["image", "label"]).set_random_state(0)
        centres = []
        for _ in range(20):
            for patch in sampler(item):
                assert set(np.unique(patch["label"].numpy())) <= {0.0, 1.0}  # the target stays the whole liver
                centres.append(float(patch["image"][0, 8, 8, 4]))
        # clip-scaled HU: tumor about 0.43, liver 0.70, body 0.17 (noise about 0.03)
        return np.mean([abs(c - 0.43) < 0.12 for c in centres])

    assert tumor_centred_share(0.9) > 0.75
    assert tumor_centred_share(0.0) < 0.2  # the thesis pos/neg sampler
    item = training.build_transforms(dataclasses_replace(tiny_config("liver", 1), tumor_crop_fraction=0.5),
                                     training=True)(blob_cases[0])[0]
    assert "classes" not in item and item["image"].shape[1:] == (16, 16, 8)
    assert "classes" not in training.build_transforms(
        dataclasses_replace(tiny_config("liver", 1), tumor_crop_fraction=0.5), training=False)(blob_cases[0])
    with pytest.raises(ValueError, match="tumor_crop_fraction"):
        training.build_transforms(dataclasses_replace(tiny_config("liver", 1), tumor_crop_fraction=1.0), True)


def test_lesion_balanced_centres_give_every_lesion_the_same_share():
    from LiverTumorSegLib.training.transforms import LesionBalancedCentresd

    label = torch.zeros(1, 24, 24, 12)
    label[0, 2:12, 2:12, 2:10] = 1  # 800 voxels
    label[0, 18:20, 18:20, 5:7] = 1  # 8 voxels, apart from the first
    image = torch.full((2, 24, 24, 12), 0.5)
    image[0, :, :, 11] = 0.0  # air: not a background centre (as RandCropByPosNegLabeld's image_threshold)
    background, lesions = LesionBalancedCentresd()({"image": image, "label": label})["centre_indices"]
    shape = label.shape[1:]
    assert len(lesions) == 1600 and np.all(label[0].numpy().ravel()[lesions] == 1)
    in_small = np.array([np.unravel_index(i, shape)[0] >= 16 for i in lesions])
    assert in_small.sum() == 800  # 8 voxels, each 100 times: the same share as the 800-voxel lesion
    assert len(np.unique(lesions[in_small])) == 8 and len(np.unique(lesions[~in_small])) == 800
    expected_background = (label[0] == 0) & (image[0] > 0)
    assert np.array_equal(np.sort(background), np.flatnonzero(expected_background.numpy().ravel()))
    _, none = LesionBalancedCentresd()({"image": image, "label": torch.zeros_like(label)})["centre_indices"]
    assert len(none) == 0  # a tumor-free case: background patches only


def test_the_tumor_stage_can_balance_its_patches_over_lesions(blob_cases):
    from monai.transforms import Compose

    from LiverTumorSegLib.training.transforms import LesionBalancedCentresd

    config = dataclasses_replace(tiny_config("tumor", 1), lesion_balanced_crops=True)
    item = training.build_transforms(config, training=True)(blob_cases[0])[0]
    assert "centre_indices" not in item and item["image"].shape == (2, 16, 16, 8)
    assert "centre_indices" not in training.build_transforms(config, training=False)(blob_cases[0])
    # half the patches are centred on a lesion, as with the thesis sampler
    prepared = Compose([*training._deterministic_transforms(config), LesionBalancedCentresd()])(blob_cases[0])
    sampler = training._patch_sampler(config, ["image", "label"]).set_random_state(0)
    centred = [float(patch["label"][0, 8, 8, 4]) for _ in range(30) for patch in sampler(prepared)]
    assert 0.3 < np.mean(centred) < 0.7
    with pytest.raises(ValueError, match="lesion_balanced_crops is for the tumor stage"):
        training.build_transforms(dataclasses_replace(tiny_config("liver", 1), lesion_balanced_crops=True), True)


def test_training_preprocesses_exactly_as_the_cascade_will(blob_cases):
    """The training image channel is the cascade's ``preprocess_ct`` of the same CT with the entry the
    configuration exports: one manifest entry drives both (orientation, spacing, intensity)."""
    from LiverTumorSegLib.core.preprocessing import preprocess_ct

    config = tiny_config("liver", 1)
    item = training.build_transforms(config, training=False)(blob_cases[0])
    entry = config.manifest_entry(training.MODEL_FILE_NAME)
    expected = preprocess_ct(sitk.ReadImage(blob_cases[0]["image"]), entry)
    assert tuple(item["image"].shape) == tuple(expected.shape)
    np.testing.assert_allclose(np.asarray(item["image"]), np.asarray(expected), atol=1e-5)
    assert entry.spacing_mm == config.spacing_mm and entry.intensity["hu_min"] == config.hu_min
