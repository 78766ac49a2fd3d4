"""Benchmark: staging encoder throughput (slices/s) of the full SAM vit_b image encoder (random init).

Times ``TNMStagingLib.core.features.embed_slices`` (the code path of ``tnmstaging features``: HU window, SAM
resize/normalise/pad to 1024x1024, ``ImageEncoderViT`` forward to 256x64x64, pooling, copy back) on
synthetic 512x512 CT slices. The CPU runs float32 at batch sizes 1 and 2 on a few slices; a CUDA GPU, when
present, runs under autocast (bf16 where supported, else fp16) on more slices. One warm-up batch per
configuration is not timed. Prints one JSON line: the headline figures are the GPU run when there is one,
else the fastest CPU run; ``runs`` lists every configuration; ``ratio_to_target`` = slices/s / 40
(the target for a GPU).

    .venv/bin/python benchmarks/staging.py [--cpu-slices 2] [--cpu-batch-sizes 1,2] [--gpu-slices 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from TNMStagingLib.core import features

TARGET_GPU_SLICES_PER_S = 40


def synthetic_slices(count: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """(count, size, size) float32 HU: air, a body ellipse at 40 HU with noise, a brighter liver region."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    body = (x / 0.45) ** 2 + (y / 0.35) ** 2 <= 1
    liver = ((x + 0.15) / 0.2) ** 2 + ((y + 0.05) / 0.15) ** 2 <= 1
    base = np.where(body, 40.0, -1000.0) + np.where(liver, 20.0, 0.0)
    return (base[None] + rng.normal(0, 15, (count, size, size))).astype(np.float32)


def run(encoder, device: torch.device, slices: int, batch_size: int) -> dict:
    config = features.FeatureConfig(encoder=features.VIT_B)
    data = synthetic_slices(slices + batch_size)
    features.embed_slices(
        encoder, data[:batch_size], config, batch_size=batch_size, device=str(device)
    )  # warm-up
    start = time.perf_counter()
    pooled = features.embed_slices(
        encoder, data[batch_size:], config, batch_size=batch_size, device=str(device)
    )
    elapsed = time.perf_counter() - start
    assert pooled.shape == (slices, 256) and np.isfinite(pooled).all()
    if device.type == "cuda":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    else:
        dtype = "float32"
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "device_type": device.type,
        "batch_size": batch_size,
        "dtype": dtype,
        "slices": slices,
        "seconds": round(elapsed, 3),
        "slices_per_s": round(slices / elapsed, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-slices", type=int, default=2, help="timed slices per CPU run (default 2)")
    parser.add_argument("--cpu-batch-sizes", default="1,2", help="CPU batch sizes (default 1,2)")
    parser.add_argument("--gpu-slices", type=int, default=64, help="timed slices per GPU run (default 64)")
    parser.add_argument("--gpu-batch-sizes", default="8,16", help="GPU batch sizes (default 8,16)")
    parser.add_argument("--skip-cpu", action="store_true", help="time the GPU only")
    args = parser.parse_args()
    encoder = features.build_encoder(features.VIT_B, seed=0)
    runs = []
    if torch.cuda.is_available():
        for batch in (int(b) for b in args.gpu_batch_sizes.split(",")):
            runs.append(run(encoder, torch.device("cuda"), args.gpu_slices, batch))
    if not args.skip_cpu:
        for batch in (int(b) for b in args.cpu_batch_sizes.split(",")):
            runs.append(run(encoder, torch.device("cpu"), args.cpu_slices, batch))
    gpu_runs = [r for r in runs if r["device_type"] == "cuda"]
    best = max(gpu_runs or runs, key=lambda r: r["slices_per_s"])
    result = {
        "benchmark": "staging_encoder",
        "encoder": "vit_b (random init: throughput only)",
        "device": best["device"],
        "slices_per_s": best["slices_per_s"],
        "batch_size": best["batch_size"],
        "dtype": best["dtype"],
        "target_gpu_slices_per_s": TARGET_GPU_SLICES_PER_S,
        "ratio_to_target": round(best["slices_per_s"] / TARGET_GPU_SLICES_PER_S, 3),
        "gpu_available": bool(gpu_runs),
        "torch": torch.__version__,
        "runs": runs,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
