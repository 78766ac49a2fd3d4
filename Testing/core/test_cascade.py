"""The liver-then-tumor cascade: logic on a phantom with threshold "networks", a real SegResNet end to end.

The threshold modules are not models: they make the cascade's logic (largest component, hole filling,
crop, tumors inside the liver, minimum volume, resampling back) checkable against known answers.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.core.cascade import (
    NoLiverFoundWarning,
    clean_liver_mask,
    liver_crop_region,
    run_cascade,
)
from LiverTumorSegLib.core.inference import InferenceCancelled, count_windows, select_device
from LiverTumorSegLib.models.manifest import ModelEntry
from LiverTumorSegLib.models.networks import LoadedModel, build_network

CLIP = {"type": "clip_scale", "hu_min": -100, "hu_max": 200, "out_min": 0.0, "out_max": 1.0}
HU = {"body": 150, "liver": 60, "tumor": 20, "vessel": 180}  # after clip_scale: 0.83, 0.53, 0.40, 0.93
SPACING = (1.5, 1.5, 2.5)
SIZE = (64, 56, 40)  # x, y, z voxels: 96 x 84 x 100 mm
OBLIQUE = sitk.VersorTransform((0.3, 0.2, 0.9), 0.17).GetMatrix()  # about 10 degrees


def entry(task: str, spacing, roi, channels=("ct",), **extra) -> ModelEntry:
    data = {
        "id": f"test-{task}",
        "task": task,
        "file_name": "x.pt",
        "local_path": "x.pt",
        "sha256": "0" * 64,
        "labels": {"liver": 1} if task == "liver" else {"tumor": 1},
        "input_channels": list(channels),
        "network": {
            "class": "monai.networks.nets.SegResNet",
            "args": {
                "spatial_dims": 3,
                "in_channels": len(channels),
                "out_channels": 2,
                "init_filters": 4,
                "blocks_down": [1, 1, 1],
                "blocks_up": [1, 1],
                "norm": ["GROUP", {"num_groups": 2}],
            },
        },
        "spacing_mm": list(spacing),
        "roi_size": list(roi),
        "sw_overlap": 0.25,
        "intensity": CLIP,
    }
    data.update(extra)
    return ModelEntry.from_dict(data)


class IntensityBand(torch.nn.Module):
    """Two-class logits: class 1 where input channel 0 lies in (low, high). Counts its calls."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high, self.calls = low, high, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        inside = ((x[:, :1] > self.low) & (x[:, :1] < self.high)).float() * 20 - 10
        return torch.cat([-inside, inside], dim=1)


def liver_stub() -> LoadedModel:
    return LoadedModel(entry("liver", (3.0, 3.0, 3.0), (32, 32, 32)), IntensityBand(0.36, 0.60))


def tumor_stub() -> LoadedModel:
    return LoadedModel(
        entry("tumor", (1.0, 1.0, 2.0), (48, 48, 24), channels=("ct", "liver_mask")),
        IntensityBand(0.36, 0.46),
    )


def ball(grid, centre, radius):
    x, y, z = grid
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def phantom():
    """(ct, truth) on an oblique, anisotropic grid; truth: dict of boolean (z, y, x) arrays."""
    z, y, x = np.indices(SIZE[::-1], dtype=np.float64)
    grid = (x * SPACING[0], y * SPACING[1], z * SPACING[2])  # mm along the image axes
    liver = ((grid[0] - 45) / 28) ** 2 + ((grid[1] - 42) / 24) ** 2 + ((grid[2] - 50) / 30) ** 2 <= 1
    truth = {
        "liver": liver,
        "tumor": ball(grid, (38, 36, 48), 7.0),  # 1.44 mL, inside
        "small_tumor": ball(grid, (58, 50, 60), 2.5),  # about 0.065 mL, inside
        "outside_tumor": ball(grid, (84, 42, 50), 5.0),  # tumor-like, 6 mm outside the liver
        "far_blob": ball(grid, (10, 10, 12), 6.0),  # liver-like, far away
        "cavity": ball(grid, (50, 30, 40), 4.0),  # enclosed bright hole in the liver (3D fill)
        "vessel": ((grid[0] - 55) ** 2 + (grid[1] - 42) ** 2 <= 9.0),  # runs through the liver (2D fill)
    }
    hu = np.full(liver.shape, HU["body"], dtype=np.int16)
    hu[liver | truth["far_blob"]] = HU["liver"]
    hu[truth["cavity"] | (truth["vessel"] & liver)] = HU["vessel"]
    hu[truth["tumor"] | truth["small_tumor"] | truth["outside_tumor"]] = HU["tumor"]
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing(SPACING)
    ct.SetOrigin((-40.0, 25.0, -300.0))
    ct.SetDirection(OBLIQUE)
    return ct, truth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def stub_result(phantom):
    calls = []
    result = run_cascade(
        phantom[0], liver_stub(), tumor_stub(), device="cpu", progress=lambda *args: calls.append(args)
    )
    return result, calls


def test_labelmap_is_exactly_on_the_input_grid(phantom, stub_result):
    ct, labels = phantom[0], stub_result[0].labels
    assert labels.GetSize() == ct.GetSize()
    assert labels.GetOrigin() == ct.GetOrigin()
    assert labels.GetSpacing() == ct.GetSpacing()
    assert labels.GetDirection() == ct.GetDirection()
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) == {0, 1, 2}


def test_liver_is_the_largest_component_with_holes_filled(phantom, stub_result):
    truth, labels = phantom[1], sitk.GetArrayFromImage(stub_result[0].labels)
    assert dice(labels > 0, truth["liver"]) > 0.95
    assert not labels[truth["far_blob"]].any()  # a smaller liver-like component is dropped
    cavity_core = truth["cavity"] & ~ndimage_dilate(~truth["cavity"], 2)
    assert labels[cavity_core].all()  # enclosed hole: 3D fill
    vessel_core = truth["vessel"] & ndimage_erode(truth["liver"], 4)
    assert labels[vessel_core].mean() > 0.95  # open-ended tunnel: slice-wise fill


def ndimage_dilate(mask, iterations):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=iterations)


def ndimage_erode(mask, iterations):
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=iterations)


def test_tumors_inside_the_liver_above_the_minimum_volume(phantom, stub_result):
    truth = phantom[1]
    result = stub_result[0]
    labels = sitk.GetArrayFromImage(result.labels)
    assert dice(labels == 2, truth["tumor"]) > 0.85
    assert not (labels[truth["outside_tumor"]] == 2).any()  # outside the liver: dropped
    assert not (labels[truth["small_tumor"]] == 2).any()  # below 0.1 mL: dropped
    assert len(result.lesions) == 1
    voxel_ml = np.prod(SPACING) / 1000
    assert result.lesions[0].volume_ml == pytest.approx(np.count_nonzero(truth["tumor"]) * voxel_ml, rel=0.15)
    assert abs(result.lesions[0].longest_axial_diameter_mm - 14.0) <= 2 * SPACING[0]
    centre = result.labels.TransformContinuousIndexToPhysicalPoint((38 / 1.5, 36 / 1.5, 48 / 2.5))
    np.testing.assert_allclose(result.lesions[0].centroid_mm, centre, atol=1.0)
    assert result.tumor_volume_ml == pytest.approx(result.lesions[0].volume_ml)
    assert result.liver_volume_ml == pytest.approx(np.count_nonzero(labels) * voxel_ml)


def test_minimum_tumor_volume_is_configurable(phantom):
    result = run_cascade(phantom[0], liver_stub(), tumor_stub(), device="cpu", min_tumor_ml=0.0)
    labels = sitk.GetArrayFromImage(result.labels)
    assert len(result.lesions) == 2
    assert (labels[phantom[1]["small_tumor"]] == 2).any()
    assert not (labels[phantom[1]["outside_tumor"]] == 2).any()
    assert 0 < result.lesions[1].volume_ml < 0.1


def test_crop_is_the_liver_box_plus_the_margin(phantom, stub_result):
    (x0, y0, z0), (sx, sy, sz) = stub_result[0].crop_index_size
    zs, ys, xs = np.nonzero(phantom[1]["liver"])
    margin = 10.0 / np.asarray(SPACING)
    slack = 3.0 / np.asarray(SPACING) + 1  # one coarse (3 mm) liver voxel + rounding
    for lo, size, truth, m, s, full in zip(
        (x0, y0, z0), (sx, sy, sz), (xs, ys, zs), margin, slack, SIZE, strict=True
    ):
        assert abs(lo - max(truth.min() - m, 0)) <= s
        assert abs(lo + size - 1 - min(truth.max() + m, full - 1)) <= s


def test_progress_is_monotonic_and_complete(stub_result):
    calls = stub_result[1]
    fractions = [fraction for _, fraction, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    stages = [stage for stage, _, _ in calls]
    assert stages.index("tumor") > max(i for i, stage in enumerate(stages) if stage == "liver")
    assert stages[-1] == "done" and all(isinstance(message, str) and message for _, _, message in calls)
    timings = stub_result[0].timings_s
    assert {"liver_inference", "tumor_inference", "total"} <= set(timings)
    assert all(value >= 0 for value in timings.values())


def test_liver_only_cascade(phantom):
    result = run_cascade(phantom[0], liver_stub(), None, device="cpu")
    assert set(np.unique(sitk.GetArrayViewFromImage(result.labels)).tolist()) == {0, 1}
    assert result.lesions == [] and result.stages == ["liver"]


def test_no_liver_gives_an_empty_labelmap_and_a_warning(phantom):
    nothing = LoadedModel(liver_stub().entry, IntensityBand(5.0, 6.0))
    tumor = tumor_stub()
    with pytest.warns(NoLiverFoundWarning, match="no liver"):
        result = run_cascade(phantom[0], nothing, tumor, device="cpu")
    assert not sitk.GetArrayViewFromImage(result.labels).any() and result.lesions == []
    assert tumor.module.calls == 0
    assert result.labels.GetSize() == phantom[0].GetSize()


def test_cancel_stops_between_windows(phantom):
    cancel = threading.Event()
    liver = liver_stub()

    def progress(stage, fraction, message):
        if fraction > 0.1:
            cancel.set()

    with pytest.raises(InferenceCancelled):
        run_cascade(phantom[0], liver, tumor_stub(), device="cpu", progress=progress, cancel=cancel)
    assert 1 <= liver.module.calls < 4


def test_clean_liver_mask_keeps_the_largest_component_and_fills_holes():
    array = np.zeros((20, 30, 30), dtype=np.uint8)
    array[2:18, 5:25, 5:25] = 1
    array[8:12, 12:16, 12:16] = 0  # enclosed cavity
    array[:, 20:22, 8:10] = 0  # tunnel through all slices: a 2D hole in each slice only
    array[5:7, 0:2, 0:2] = 1  # small separate component
    mask = sitk.GetImageFromArray(array)
    cleaned = sitk.GetArrayFromImage(clean_liver_mask(mask))
    expected = np.zeros_like(array)
    expected[2:18, 5:25, 5:25] = 1
    np.testing.assert_array_equal(cleaned, expected)
    no_slicewise = sitk.GetArrayFromImage(clean_liver_mask(mask, slicewise=False))
    assert not no_slicewise[2:18, 20:22, 8:10].any() and no_slicewise[8:12, 12:16, 12:16].all()


def test_crop_region_of_an_empty_mask_is_none():
    mask = sitk.Image((8, 8, 8), sitk.sitkUInt8)
    assert liver_crop_region(mask, mask, 10.0) is None


def test_real_segresnets_end_to_end_on_cpu():
    """Random-init SegResNets (shapes, progress, device): the liver output is biased to 'liver'."""
    torch.manual_seed(0)
    liver_entry = entry("liver", (4.0, 4.0, 4.0), (16, 16, 16))
    liver_net = build_network(liver_entry)
    with torch.no_grad():
        liver_net.conv_final[-1].conv.bias.copy_(torch.tensor([-20.0, 20.0]))
    tumor_entry = entry("tumor", (2.0, 2.0, 2.0), (16, 16, 16), channels=("ct", "liver_mask"))
    ct = sitk.GetImageFromArray(np.random.default_rng(0).normal(40, 60, (20, 36, 40)).astype(np.int16))
    ct.SetSpacing((1.6, 1.6, 3.0))
    calls = []
    result = run_cascade(
        ct,
        LoadedModel(liver_entry, liver_net.eval()),
        LoadedModel(tumor_entry, build_network(tumor_entry).eval()),
        device="cpu",
        min_tumor_ml=0.0,
        progress=lambda *args: calls.append(args),
    )
    assert result.device == "cpu"
    assert result.labels.GetSize() == ct.GetSize()
    labels = sitk.GetArrayViewFromImage(result.labels)
    assert labels.all()  # everything is liver (biased output), tumors are whatever the random net says
    fractions = [fraction for _, fraction, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {stage for stage, _, _ in calls} == {"liver", "tumor", "done"}


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device("auto").type == expected
    if torch.cuda.is_available():
        assert select_device("cuda").type == "cuda"
    else:
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        select_device("tpu")


@pytest.mark.parametrize(
    "size, roi, overlap",
    [
        ((40, 40, 40), (16, 16, 16), 0.25),
        ((10, 50, 33), (16, 16, 8), 0.5),
        ((16, 16, 16), (16, 16, 16), 0.25),
    ],
)
def test_count_windows_matches_monai(size, roi, overlap):
    from monai.inferers import sliding_window_inference

    seen = []
    sliding_window_inference(torch.zeros(1, 1, *size), roi, 1, lambda w: seen.append(1) or w, overlap)
    assert count_windows(size, roi, overlap) == len(seen)


def test_sliding_window_on_one_window_equals_the_network():
    from LiverTumorSegLib.core.inference import sliding_window_logits

    torch.manual_seed(0)
    network = build_network(entry("liver", (1, 1, 1), (16, 16, 16))).eval()
    image = torch.rand(1, 16, 16, 16)
    with torch.inference_mode():
        expected = network(image[None])
    fractions = []
    logits = sliding_window_logits(
        image,
        network,
        roi_size=(16, 16, 16),
        overlap=0.25,
        device=torch.device("cpu"),
        progress=fractions.append,
    )
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert fractions == [1.0]


def _truth_stage(mask_of, seen: list):
    """A publisher-pipeline stage (``LoadedModel.stage``) answering a truth mask on the CT's grid; records its
    inputs and its progress calls."""

    def stage(ct, liver, progress, cancel, device):
        seen.append((ct, liver))
        progress(0.0)
        progress(1.0)
        mask = sitk.GetImageFromArray(mask_of.astype(np.uint8))
        mask.CopyInformation(ct)
        return mask

    return stage


def test_pipeline_stages_run_instead_of_the_sliding_window_and_see_the_whole_ct(phantom):
    """A model with a ``stage`` (the KU Leuven pipelines) gets the whole CT: the liver stage alone, the tumor stage
    with the cascade's liver on the CT's grid. The cascade's rules still apply to what the stage answers: tumors
    only inside the liver and at least ``min_tumor_ml``."""
    ct, truth = phantom
    liver_seen, tumor_seen = [], []
    everything_tumor_like = truth["tumor"] | truth["small_tumor"] | truth["outside_tumor"]
    liver = LoadedModel(liver_stub().entry, IntensityBand(5.0, 6.0),  # the network would find nothing
                        stage=_truth_stage(truth["liver"], liver_seen))
    tumor = LoadedModel(tumor_stub().entry, IntensityBand(5.0, 6.0),
                        stage=_truth_stage(everything_tumor_like, tumor_seen))
    calls = []
    result = run_cascade(ct, liver, tumor, device="cpu", progress=lambda *args: calls.append(args))
    labels = sitk.GetArrayFromImage(result.labels)
    assert [seen[0] is ct for seen in liver_seen + tumor_seen] == [True, True]
    assert liver_seen[0][1] is None
    tumor_liver = tumor_seen[0][1]
    assert tumor_liver.GetSize() == ct.GetSize() and tumor_liver.GetOrigin() == ct.GetOrigin()
    assert dice(sitk.GetArrayFromImage(tumor_liver) > 0, truth["liver"]) > 0.97
    assert dice(labels == 2, truth["tumor"]) > 0.95  # the outside tumor and the 0.065 mL one are dropped
    assert not (labels[truth["outside_tumor"]] == 2).any() and not (labels[truth["small_tumor"]] == 2).any()
    assert dice(labels > 0, truth["liver"]) > 0.97
    fractions = [fraction for _, fraction, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"liver_inference", "tumor_inference"} <= set(result.timings_s)
    assert liver.module.calls == 0 and tumor.module.calls == 0  # no sliding window ran
