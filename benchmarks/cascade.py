"""Cascade speed benchmark: liver-then-tumor cascade vs a naive single pass at thesis resolution.

Input: a synthetic 512 x 512 x 200 CT at 0.8 x 0.8 x 2.5 mm (soft tissue, spine, a liver of typical
size, 190 x 160 x 170 mm, with a vessel and three tumors). Networks: random-init SegResNets of the thesis' size (init_filters 16, blocks_down
(1, 2, 2, 4), blocks_up (1, 1, 1), 2 outputs). This measures speed and memory, not accuracy.

- Cascade: ``run_cascade`` end to end (preprocessing, both sliding windows, post-processing,
  resampling to the input grid, lesion table). Each network's forward pass is computed in full on
  every window, but its output is replaced by a threshold of the phantom's intensities, so that the
  liver crop and the lesion table have the size they would have with a trained model (a random
  network's output would make the crop empty or the whole volume).
- Naive: the thesis network over the whole volume at thesis resolution (RAS, 1.0 x 1.0 x 2.5 mm,
  HU -100..200 -> 0..1), ROI 128 x 128 x 48, overlap 0.4, Gaussian blending, argmax; same device.

Prints one JSON line: cascade_s, naive_s, speedup (naive_s / cascade_s), peak_rss_gb (process peak at
the end of the cascade, before the naive pass), cpu_s (cascade user+system CPU time), device, and
details. Usage: ``python benchmarks/cascade.py [--device auto|cpu|cuda] [--skip-naive]``.

``--real``: the real cascades instead, each liver stage of ``REAL_LIVER_MODELS`` with the KU Leuven lesion stage,
trained weights (fetched into the model cache when missing), on a 512 x 512 x 200 CT at 0.8 x 0.8 x 2.5 mm with
real anatomy: ``../shared/realct/totalseg_3mm`` (3 mm, non-contrast) in LPS, 165 mm mirrored below its last slice
so that the body is 501 mm long, resampled (linear) onto that grid centred in x/y, the liver at the top, -1024 HU
outside the original field of view. Each cascade runs in its own process (its own peak RSS); one JSON line with
per cascade total_s, liver_s, tumor_s, peak_rss_gb, cpu_s, and the targets (60 s and 6 GB on 2 CPU cores, 5 s on a
GPU). A liver model whose weights cannot be had is reported with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from LiverTumorSegLib.core.cascade import run_cascade
from LiverTumorSegLib.core.inference import count_windows, infer_labels, select_device
from LiverTumorSegLib.core.preprocessing import preprocess_ct
from LiverTumorSegLib.models.manifest import ModelEntry
from LiverTumorSegLib.models.networks import LoadedModel, build_network

SIZE = (512, 512, 200)  # x, y, z voxels
SPACING = (0.8, 0.8, 2.5)  # mm
# Soft tissue is brighter than the liver so that no partial-volume edge mimics a tumor for the thresholds
HU = {"soft": 130, "bone": 400, "liver": 60, "tumor": 20, "vessel": 180}
CLIP = {"type": "clip_scale", "hu_min": -100, "hu_max": 200, "out_min": 0.0, "out_max": 1.0}
LIVER_BAND = (0.36, 0.60)  # liver (60 HU -> 0.53) and tumors (20 HU -> 0.40) after CLIP
TUMOR_BAND = (0.36, 0.46)
TUMORS_MM = [((-80.0, -20.0, 10.0), 18.0), ((-30.0, 20.0, -30.0), 11.0), ((-95.0, 30.0, 40.0), 7.0)]


def thesis_network(in_channels: int) -> dict:
    args = {
        "spatial_dims": 3,
        "in_channels": in_channels,
        "out_channels": 2,
        "init_filters": 16,
        "blocks_down": [1, 2, 2, 4],
        "blocks_up": [1, 1, 1],
    }
    return {"class": "monai.networks.nets.SegResNet", "args": args}


def make_entry(model_id: str, task: str, channels, spacing, roi, overlap) -> ModelEntry:
    return ModelEntry.from_dict(
        {
            "id": model_id,
            "task": task,
            "file_name": "random-init.pt",
            "local_path": "random-init.pt",
            "sha256": "0" * 64,
            "labels": {"liver": 1} if task == "liver" else {"tumor": 1},
            "network": thesis_network(len(channels)),
            "input_channels": list(channels),
            "spacing_mm": list(spacing),
            "roi_size": list(roi),
            "sw_overlap": overlap,
            "intensity": CLIP,
            "demo_only": True,
        }
    )


# Liver stage: 3 mm, the whole coarse volume (137 x 137 x 167 voxels here) in one window
LIVER_ENTRY = make_entry("bench-liver", "liver", ["ct"], (3.0, 3.0, 3.0), (144, 144, 176), 0.25)
TUMOR_ENTRY = make_entry("bench-tumor", "tumor", ["ct", "liver_mask"], (1.0, 1.0, 2.5), (128, 128, 48), 0.25)
NAIVE_ENTRY = make_entry("bench-naive", "tumor", ["ct"], (1.0, 1.0, 2.5), (128, 128, 48), 0.4)


class ComputedThenBand(torch.nn.Module):
    """Runs ``network`` in full, then answers class 1 where input channel 0 lies in ``band``."""

    def __init__(self, network: torch.nn.Module, band: tuple[float, float]) -> None:
        super().__init__()
        self.network, self.low, self.high = network, band[0], band[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        computed = self.network(x)
        inside = ((x[:, :1] > self.low) & (x[:, :1] < self.high)).to(computed.dtype) * 20 - 10
        return torch.cat([-inside, inside], dim=1) + 0 * computed


def synthetic_ct() -> sitk.Image:
    """512 x 512 x 200 int16 CT (HU), identity direction, built slice by slice (no big temporaries)."""
    nx, ny, nz = SIZE
    x = (np.arange(nx) - nx / 2) * SPACING[0]
    y = (np.arange(ny) - ny / 2) * SPACING[1]
    xx, yy = np.meshgrid(x, y)  # (y, x) in mm, patient left = +x, posterior = +y
    spine = (xx**2 + (yy - 70) ** 2) <= 20**2
    array = np.empty((nz, ny, nx), dtype=np.int16)
    for k in range(nz):
        z = (k - nz / 2) * SPACING[2]
        plane = np.full((ny, nx), HU["soft"], dtype=np.int16)
        plane[spine] = HU["bone"]
        liver = ((xx + 60) / 95) ** 2 + ((yy + 10) / 80) ** 2 + ((z - 60) / 85) ** 2 <= 1
        plane[liver] = HU["liver"]
        plane[liver & (((xx + 50) ** 2 + (yy + 5) ** 2) <= 6**2)] = HU["vessel"]
        for (cx, cy, cz), radius in TUMORS_MM:
            plane[((xx - cx) ** 2 + (yy - cy) ** 2 + (z - 60 - cz) ** 2) <= radius**2] = HU["tumor"]
        array[k] = plane
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((-nx / 2 * SPACING[0], -ny / 2 * SPACING[1], -900.0))
    return image


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_naive(ct: sitk.Image, device: torch.device) -> tuple[float, int]:
    torch.manual_seed(2)
    network = build_network(NAIVE_ENTRY).eval()
    tick = time.perf_counter()
    image = preprocess_ct(ct, NAIVE_ENTRY)
    windows = count_windows(image.shape[1:], NAIVE_ENTRY.roi_size, NAIVE_ENTRY.sw_overlap)
    infer_labels(image, network, roi_size=NAIVE_ENTRY.roi_size, overlap=NAIVE_ENTRY.sw_overlap, device=device)
    _sync(device)
    return time.perf_counter() - tick, windows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


REAL_LIVER_MODELS = ("demo-liver-segresnet", "kuleuven-liver-ct", "monai-wholebody-ct-lowres")
REAL_TUMOR_MODEL = "kuleuven-lesion-ct"
REALCT = Path(os.environ.get("LIVERTUMOR_REALCT_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "realct")
MIRRORED_SLICES = 55  # 165 mm at 3 mm


def real_anatomy_ct(realct: Path = REALCT) -> sitk.Image:
    """The 512 x 512 x 200 CT with real anatomy described in the module docstring (int16 HU, identity direction)."""
    source = sitk.DICOMOrient(sitk.ReadImage(str(realct / "totalseg_3mm" / "ct.nii.gz")), "LPS")
    array = np.pad(sitk.GetArrayFromImage(source), ((MIRRORED_SLICES, 0), (0, 0), (0, 0)), mode="symmetric")
    padded = sitk.GetImageFromArray(array.astype(np.float32))
    padded.SetSpacing(source.GetSpacing())
    padded.SetOrigin(np.array(source.GetOrigin()) - (0.0, 0.0, MIRRORED_SLICES * source.GetSpacing()[2]))
    spacing, size = np.array(SPACING), np.array(SIZE)
    low = np.array(padded.GetOrigin()) - 0.5 * np.array(padded.GetSpacing())
    high = low + np.array(padded.GetSize()) * np.array(padded.GetSpacing())
    origin = 0.5 * (low + high) - 0.5 * size * spacing + 0.5 * spacing
    origin[2] = high[2] - size[2] * spacing[2] + 0.5 * spacing[2]  # the liver's top stays at the top
    grid = sitk.Image([int(n) for n in SIZE], sitk.sitkInt16)
    grid.SetSpacing(SPACING)
    grid.SetOrigin([float(v) for v in origin])
    resampled = sitk.Resample(padded, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    return sitk.Cast(sitk.Round(resampled), sitk.sitkInt16)


def one_real_cascade(ct_path: Path, liver_id: str, device: str) -> dict:
    """Load ``liver_id`` and the KU Leuven lesion model (fetching missing weights) and time the cascade."""
    from LiverTumorSegLib.models import networks, registry
    from LiverTumorSegLib.models.manifest import load_manifest

    manifest = load_manifest()
    try:
        liver, tumor = (networks.load_model(manifest[i], registry.resolve_model_file(manifest[i]))
                        for i in (liver_id, REAL_TUMOR_MODEL))
    except registry.RegistryError as error:
        return {"liver": liver_id, "tumor": REAL_TUMOR_MODEL, "not_run": str(error)[:300]}
    ct = sitk.ReadImage(str(ct_path))
    if select_device(device).type == "cuda":  # warm-up outside the timing: CUDA context and cuDNN autotuning
        run_cascade(ct, liver, tumor, device=device)
        torch.cuda.reset_peak_memory_stats()
    cpu_before, tick = cpu_seconds(), time.perf_counter()
    result = run_cascade(ct, liver, tumor, device=device)
    _sync(select_device(device))
    return {"liver": liver_id, "tumor": REAL_TUMOR_MODEL, "total_s": round(time.perf_counter() - tick, 1),
            "liver_s": round(result.timings_s.get("liver_inference", 0.0), 1),
            "tumor_s": round(result.timings_s.get("tumor_inference", 0.0), 1),
            "cpu_s": round(cpu_seconds() - cpu_before, 1), "peak_rss_gb": round(peak_rss_gb(), 2),
            "liver_ml": round(result.liver_volume_ml, 1), "tumor_ml": round(result.tumor_volume_ml, 2),
            "device": result.device, "torch_threads": torch.get_num_threads()}


def real_cascades(device: str) -> dict:
    """Each real cascade in a fresh process on the real-anatomy CT; figures and targets."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        ct_path = Path(folder) / "real_anatomy_512x512x200.nrrd"
        sitk.WriteImage(real_anatomy_ct(), str(ct_path))
        rows = []
        for liver_id in REAL_LIVER_MODELS:
            child = subprocess.run([sys.executable, __file__, "--one-real", liver_id, "--ct", str(ct_path),
                                    "--device", device], capture_output=True, text=True)
            lines = child.stdout.strip().splitlines()
            rows.append(json.loads(lines[-1]) if child.returncode == 0 and lines
                        else {"liver": liver_id, "failed": child.stderr[-500:]})
    gpu = select_device(device).type == "cuda"
    target_s = 5.0 if gpu else 60.0
    for row in rows:
        if "total_s" in row:
            row["within_targets"] = row["total_s"] <= target_s and (gpu or row["peak_rss_gb"] <= 6.0)
    return {"real_cascades": rows, "input_size": list(SIZE), "input_spacing_mm": list(SPACING),
            "target_s": target_s, "target_peak_rss_gb": None if gpu else 6.0, "cpu_count": os.cpu_count(),
            "load_average_before": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sw-batch-size", type=int, default=1)
    parser.add_argument("--skip-naive", action="store_true", help="cascade only (no speedup figure)")
    parser.add_argument("--real", action="store_true", help="the real cascades (trained weights, real anatomy)")
    parser.add_argument("--one-real", metavar="LIVER_MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--ct", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_real:
        print(json.dumps(one_real_cascade(args.ct, args.one_real, args.device)))
        return 0
    if args.real:
        print(json.dumps(real_cascades(args.device)))
        return 0
    device = select_device(args.device)
    torch.manual_seed(0)
    liver = LoadedModel(LIVER_ENTRY, ComputedThenBand(build_network(LIVER_ENTRY), LIVER_BAND).eval())
    tumor = LoadedModel(TUMOR_ENTRY, ComputedThenBand(build_network(TUMOR_ENTRY), TUMOR_BAND).eval())
    ct = synthetic_ct()
    if device.type == "cuda":  # warm-up outside the timing: CUDA context and cuDNN autotuning
        run_cascade(
            sitk.RegionOfInterest(ct, (256, 256, 100), (0, 128, 50)), liver, tumor, device=args.device
        )
        torch.cuda.reset_peak_memory_stats()
    cpu_before, tick = cpu_seconds(), time.perf_counter()
    result = run_cascade(ct, liver, tumor, device=args.device, sw_batch_size=args.sw_batch_size)
    _sync(device)
    cascade_s = time.perf_counter() - tick
    figures = {
        "cascade_s": round(cascade_s, 2),
        "cpu_s": round(cpu_seconds() - cpu_before, 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "device": result.device,
    }
    if device.type == "cuda":
        figures["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    if not args.skip_naive:
        naive_s, naive_windows = run_naive(ct, device)
        figures.update(
            naive_s=round(naive_s, 2), speedup=round(naive_s / cascade_s, 2), naive_windows=naive_windows
        )
    figures.update(
        input_size=list(SIZE),
        input_spacing_mm=list(SPACING),
        torch_threads=torch.get_num_threads(),
        crop_index_size=result.crop_index_size,
        n_lesions=len(result.lesions),
        liver_volume_ml=round(result.liver_volume_ml, 1),
        tumor_volume_ml=round(result.tumor_volume_ml, 1),
        timings_s={key: round(value, 2) for key, value in result.timings_s.items()},
        networks="random-init thesis-size SegResNets; cascade outputs replaced by phantom thresholds",
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
