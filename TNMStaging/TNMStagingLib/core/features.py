"""Staging features of one CT: pooled Segment Anything image embeddings plus measured lesion features.

Inputs are a CT ``sitk.Image`` in HU and a 0/1/2 labelmap ``sitk.Image`` (0 background, 1 liver
parenchyma, 2 tumor) on the same grid. Numpy arrays from SimpleITK are indexed (z, y, x).

Image features (torch and ``segment_anything`` are imported inside the functions that need them):

1. Slices: the axial slices (image axis closest to the patient S-I axis, see
   ``LiverTumorSegLib.core.measurements.axial_axis``) that contain tumor, else those that contain liver; at
   most ``max_slices`` of them, evenly sampled from first to last.
2. Each slice (its pixel grid, rows x columns as stored) is clipped to the HU window and normalised:
   ``"sam"`` input mode (Segment Anything checkpoints) scales to 0..255, repeats it in 3 channels, resizes
   the longest side to ``img_size`` (``ResizeLongestSide``, the batched torch path), subtracts SAM's pixel
   mean, divides by its std and pads bottom/right to a square, as ``Sam.preprocess`` does;
   ``"medsam"`` (MedSAM checkpoints) scales to [0, 1] and resizes to ``img_size`` x ``img_size`` (bicubic),
   without mean/std.
3. The ViT image encoder (``segment_anything.modeling.ImageEncoderViT``; vit_b: 3x1024x1024 in,
   256x64x64 out) embeds each slice; each embedding is average-pooled over its 64x64 grid (256 values;
   ``pooling="mean_max"`` adds the max-pool: 512) and the pooled vectors are averaged over the slices.

A randomly initialised encoder gives features with no learned meaning: every result carries the encoder
name and ``weights`` = ``"random-init"`` (seed recorded) or ``"sha256:<digest>"`` of the checkpoint.

Measured features (no torch) come from ``LiverTumorSegLib.core.measurements`` (26-connected lesions, longest
axial Feret diameters): see ``MEASURED_FEATURES``. HU statistics of an absent structure are NaN.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.core import measurements
from LiverTumorSegLib.core.cancel import Cancelled
from LiverTumorSegLib.core.grid import check_same_grid

if TYPE_CHECKING:
    import torch

ProgressCallback = Callable[[float, str], None]  # (fraction 0..1, message)

LIVER_LABEL, TUMOR_LABEL = measurements.LIVER_LABEL, measurements.TUMOR_LABEL
ABDOMEN_WINDOW_HU = (-135.0, 215.0)  # W 350 / L 40
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
RANDOM_INIT = "random-init"
POOLINGS = ("mean", "mean_max")
MEASURED_FEATURES = (
    "tumor_count",
    "tumor_volume_ml",
    "largest_tumor_volume_ml",
    "largest_diameter_mm",
    "sum_diameters_mm",
    "liver_volume_ml",
    "tumor_burden",
    "tumor_hu_mean",
    "tumor_hu_std",
    "liver_hu_mean",
    "liver_hu_std",
)


class FeatureExtractionCancelled(Cancelled):
    """The caller's cancel event was set; feature extraction stopped between two batches."""


@dataclass(frozen=True)
class EncoderSpec:
    """Architecture of a Segment Anything ViT image encoder and the input mode its weights expect.

    ``img_size``: square input side (pixels); the embedding grid is ``img_size // patch_size``.
    ``input_mode``: ``"sam"`` (0..255, SAM pixel mean/std, longest side resized, padded) or ``"medsam"``
    ([0, 1], resized to a square). ``manifest_id``: model manifest entry of the checkpoint, if any.
    """

    name: str
    img_size: int
    embed_dim: int
    depth: int
    heads: int
    global_attn_indexes: tuple[int, ...]
    out_chans: int
    input_mode: str = "sam"
    patch_size: int = 16
    window_size: int = 14
    manifest_id: str | None = None

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"global_attn_indexes": list(self.global_attn_indexes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        return cls(**(dict(data) | {"global_attn_indexes": tuple(data["global_attn_indexes"])}))


VIT_B = EncoderSpec("vit_b", 1024, 768, 12, 12, (2, 5, 8, 11), 256, "sam", manifest_id="sam-vit-b")
MEDSAM_VIT_B = replace(VIT_B, name="medsam", input_mode="medsam", manifest_id="medsam-vit-b")
ENCODERS = {"vit_b": VIT_B, "medsam": MEDSAM_VIT_B}


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed (stored with the features and in the trained model).

    ``hu_window``: (min, max) HU mapped to the encoder's input range. ``image_features=False`` gives the
    measured features only (no encoder run).
    """

    encoder: EncoderSpec = VIT_B
    max_slices: int = 8
    pooling: str = "mean"
    hu_window: tuple[float, float] = ABDOMEN_WINDOW_HU
    image_features: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.max_slices < 1:
            raise ValueError(f"max_slices must be >= 1, got {self.max_slices}")
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"HU window {self.hu_window} must be (min, max) with min < max")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"encoder": self.encoder.to_dict(), "hu_window": list(self.hu_window)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        values = dict(data) | {"encoder": EncoderSpec.from_dict(data["encoder"])}
        return cls(**(values | {"hu_window": tuple(data["hu_window"])}))

    def image_feature_names(self) -> list[str]:
        """``img_mean_000`` ... (then ``img_max_000`` ... with ``mean_max`` pooling); [] if disabled."""
        if not self.image_features:
            return []
        kinds = ("mean",) if self.pooling == "mean" else ("mean", "max")
        return [f"img_{kind}_{c:03d}" for kind in kinds for c in range(self.encoder.out_chans)]

    def feature_names(self) -> list[str]:
        return self.image_feature_names() + list(MEASURED_FEATURES)


@dataclass
class ImageEncoder:
    """A built encoder: the torch module, its spec, and which weights it holds."""

    module: Any
    spec: EncoderSpec
    weights: str  # "random-init" or "sha256:<hex>"
    seed: int | None = None

    @property
    def random_init(self) -> bool:
        return self.weights == RANDOM_INIT


@dataclass
class CaseFeatures:
    """Features of one case: ``values`` by name (``FeatureConfig.feature_names`` order) plus provenance."""

    values: dict[str, float]
    encoder: str
    weights: str
    input_mode: str
    slices: list[int] = field(default_factory=list)


def build_encoder(spec: EncoderSpec, checkpoint: Path | None = None, seed: int | None = None) -> ImageEncoder:
    """``ImageEncoderViT`` of ``spec`` in eval mode, on the CPU.

    With a ``checkpoint`` (a whole-SAM state dict as published, keys ``image_encoder.*``, or a bare
    encoder state dict) the weights are loaded strictly and identified by the file's SHA-256. Without one
    the encoder is randomly initialised (``seed`` makes it reproducible; the global RNG is untouched):
    such features carry no learned meaning and say so (``weights="random-init"``).
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT

    def make() -> torch.nn.Module:
        return ImageEncoderViT(
            img_size=spec.img_size,
            patch_size=spec.patch_size,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.heads,
            mlp_ratio=4,
            out_chans=spec.out_chans,
            qkv_bias=True,
            norm_layer=lambda dim: torch.nn.LayerNorm(dim, eps=1e-6),
            use_rel_pos=True,
            window_size=spec.window_size,
            global_attn_indexes=tuple(spec.global_attn_indexes),
        )

    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            module = make()
        return ImageEncoder(module.eval(), spec, RANDOM_INIT, seed)
    module = make()
    _load_checkpoint(module, Path(checkpoint))
    from LiverTumorSegLib.models.registry import file_digest

    return ImageEncoder(module.eval(), spec, "sha256:" + file_digest(checkpoint, "sha256"))


def _load_checkpoint(module: torch.nn.Module, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read encoder checkpoint {path}: {error}") from error
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"encoder checkpoint {path} does not hold a state dict")
    prefix = "image_encoder."
    if any(key.startswith(prefix) for key in state):
        state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"encoder checkpoint {path} does not fit this encoder: {error}") from error


def resolve_checkpoint(spec: EncoderSpec) -> Path:
    """Verified checkpoint of ``spec`` from the model manifest and cache (never downloads here).

    Raises ``LiverTumorSegLib.models.registry.ModelNotAvailableError`` (saying how to get the file) when it
    is not on this computer, ``ValueError`` when the manifest has no entry for this encoder.
    """
    from LiverTumorSegLib.models.manifest import load_manifest
    from LiverTumorSegLib.models.registry import resolve_model_file

    entries = load_manifest()
    if spec.manifest_id not in entries:
        raise ValueError(
            f"encoder {spec.name!r}: no model manifest entry {spec.manifest_id!r}; give the checkpoint file"
        )
    return resolve_model_file(entries[spec.manifest_id], download=False)


def select_slices(labels: sitk.Image, max_slices: int = 8) -> list[int]:
    """Indices along the axial image axis of slices with tumor, else with liver; at most ``max_slices``,
    evenly sampled (first and last kept). ``ValueError`` when the labelmap has neither."""
    array = sitk.GetArrayViewFromImage(labels)
    array_axis = 2 - measurements.axial_axis(labels)
    in_plane = tuple(a for a in range(3) if a != array_axis)
    for label in (TUMOR_LABEL, LIVER_LABEL):
        candidates = np.nonzero((array == label).any(axis=in_plane))[0]
        if candidates.size:
            break
    else:
        raise ValueError("the labelmap has neither tumor (2) nor liver (1): no slice to encode")
    if candidates.size <= max_slices:
        return [int(i) for i in candidates]
    picks = np.unique(np.round(np.linspace(0, candidates.size - 1, max_slices)).astype(int))
    return [int(candidates[i]) for i in picks]


def axial_slices_hu(ct: sitk.Image, indices: list[int]) -> np.ndarray:
    """The chosen axial slices of ``ct`` as float32 (n, rows, cols) in HU (array order of the slice)."""
    array = sitk.GetArrayViewFromImage(ct)
    array_axis = 2 - measurements.axial_axis(ct)
    return np.stack([np.take(array, i, axis=array_axis) for i in indices]).astype(np.float32)


def preprocess_slices(slices_hu: np.ndarray, spec: EncoderSpec, hu_window=ABDOMEN_WINDOW_HU) -> torch.Tensor:
    """(n, rows, cols) HU -> (n, 3, img_size, img_size) float32 encoder input (see module docstring)."""
    import torch
    import torch.nn.functional as F

    low, high = (float(v) for v in hu_window)
    unit = (np.clip(slices_hu, low, high) - low) / (high - low)
    x = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))[:, None].expand(-1, 3, -1, -1)
    size = spec.img_size
    if spec.input_mode == "medsam":
        x = F.interpolate(x, (size, size), mode="bicubic", align_corners=False, antialias=True)
        return x.clamp(0.0, 1.0).contiguous()
    if spec.input_mode != "sam":
        raise ValueError(f"unknown encoder input mode {spec.input_mode!r} (sam or medsam)")
    from segment_anything.utils.transforms import ResizeLongestSide

    # ResizeLongestSide's target shape, applied with its interpolation settings (its apply_image_torch
    # takes the shape from the batch and channel dimensions in segment-anything 1.0, so it is not used).
    target = ResizeLongestSide.get_preprocess_shape(x.shape[-2], x.shape[-1], size)
    x = F.interpolate(x * 255.0, target, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2])).contiguous()


def encode_batch(encoder: ImageEncoder, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Embeddings (B, out_chans, grid, grid) float32 on ``device`` of preprocessed images (B, 3, S, S).

    Runs under ``torch.inference_mode`` with autocast on GPUs (bf16 where supported, else fp16).
    """
    import torch

    from LiverTumorSegLib.core.inference import autocast_context

    module = encoder.module.to(device)
    with torch.inference_mode(), autocast_context(device):
        return module(images.to(device)).float()


def pool_embeddings(embeddings: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(B, C, h, w) -> (B, C) average over the grid, or (B, 2C) average then max (``"mean_max"``)."""
    pooled = embeddings.mean(dim=(-2, -1))
    if pooling == "mean_max":
        import torch

        pooled = torch.cat([pooled, embeddings.amax(dim=(-2, -1))], dim=1)
    return pooled


def embed_slices(
    encoder: ImageEncoder,
    slices_hu: np.ndarray,
    config: FeatureConfig,
    *,
    batch_size: int = 2,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Pooled embedding per slice, (n, n_image_features) float64, computed ``batch_size`` slices at a time.

    The cancel event is checked before each batch (``FeatureExtractionCancelled``); ``progress`` gets the
    fraction of slices done.
    """
    from LiverTumorSegLib.core.inference import select_device

    torch_device = select_device(device)
    pooled = []
    for start in range(0, len(slices_hu), max(1, int(batch_size))):
        if cancel is not None and cancel.is_set():
            raise FeatureExtractionCancelled("feature extraction cancelled")
        chunk = slices_hu[start : start + max(1, int(batch_size))]
        images = preprocess_slices(chunk, encoder.spec, config.hu_window)
        embeddings = encode_batch(encoder, images, torch_device)
        pooled.append(pool_embeddings(embeddings, config.pooling).cpu().numpy().astype(np.float64))
        if progress is not None:
            done = start + len(chunk)
            progress(done / len(slices_hu), f"encoded {done}/{len(slices_hu)} slices ({encoder.spec.name})")
    return np.concatenate(pooled, axis=0)


def _hu_stats(ct_array: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    values = ct_array[mask]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std())


def measured_features(ct: sitk.Image, labels: sitk.Image) -> dict[str, float]:
    """``MEASURED_FEATURES`` of a case: counts, volumes (mL), diameters (mm), burden, HU mean/std.

    ``liver_volume_ml`` is the total liver volume (parenchyma + tumor); ``tumor_burden`` = tumor volume /
    total liver volume (0 without liver); liver HU statistics are over the parenchyma (label 1).
    """
    check_same_grid(labels, ct, "the labelmap", "the CT")
    table = measurements.measure_labelmap(labels)
    diameters = [lesion.longest_axial_diameter_mm for lesion in table.lesions]
    ct_array = sitk.GetArrayViewFromImage(ct)
    label_array = sitk.GetArrayViewFromImage(labels)
    tumor_hu = _hu_stats(ct_array, label_array == TUMOR_LABEL)
    liver_hu = _hu_stats(ct_array, label_array == LIVER_LABEL)
    return {
        "tumor_count": float(len(table.lesions)),
        "tumor_volume_ml": table.tumor_volume_ml,
        "largest_tumor_volume_ml": max((lesion.volume_ml for lesion in table.lesions), default=0.0),
        "largest_diameter_mm": max(diameters, default=0.0),
        "sum_diameters_mm": float(sum(diameters)),
        "liver_volume_ml": table.liver_volume_ml,
        "tumor_burden": table.tumor_volume_ml / table.liver_volume_ml if table.liver_volume_ml else 0.0,
        "tumor_hu_mean": tumor_hu[0],
        "tumor_hu_std": tumor_hu[1],
        "liver_hu_mean": liver_hu[0],
        "liver_hu_std": liver_hu[1],
    }


def case_features(
    ct: sitk.Image,
    labels: sitk.Image,
    config: FeatureConfig,
    encoder: ImageEncoder | None = None,
    *,
    batch_size: int = 2,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> CaseFeatures:
    """All features of one case (image features first, then measured) with their provenance.

    ``encoder`` is required when ``config.image_features`` is true and must match ``config.encoder``.
    """
    check_same_grid(labels, ct, "the labelmap", "the CT")
    values: dict[str, float] = {}
    slices: list[int] = []
    if config.image_features:
        if encoder is None or encoder.spec != config.encoder:
            raise ValueError(f"image features need the encoder {config.encoder.name!r} of the feature config")
        slices = select_slices(labels, config.max_slices)
        per_slice = embed_slices(
            encoder,
            axial_slices_hu(ct, slices),
            config,
            batch_size=batch_size,
            device=device,
            progress=progress,
            cancel=cancel,
        )
        values.update(zip(config.image_feature_names(), per_slice.mean(axis=0).tolist(), strict=True))
    values.update(measured_features(ct, labels))
    if progress is not None:
        progress(1.0, "features done")
    return CaseFeatures(
        values=values,
        encoder=config.encoder.name if config.image_features else "none",
        weights=encoder.weights if (encoder is not None and config.image_features) else "none",
        input_mode=config.encoder.input_mode if config.image_features else "none",
        slices=slices,
    )
