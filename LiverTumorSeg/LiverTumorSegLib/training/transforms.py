"""Training-only MONAI transforms (imported by ``training`` when a recipe uses them)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.transforms.utils_morphological_ops import dilate, erode


class RandChannelMorphologyd(RandomizableTransform, MapTransform):
    """Randomly dilate or erode one binary channel of ``keys`` (each C, x, y, z) by 1..``max_voxels`` voxels.

    For the tumor stage's liver-mask channel: in the cascade that channel is the liver model's prediction,
    whose surface lies a voxel or more off the truth and may leave out a tumor at the liver's edge. A model
    trained on exact masks only learns "low HU inside the mask = tumor" and marks the fat that a slightly
    too large mask takes in. With probability ``prob`` the channel is dilated or eroded (even odds) with a
    cubic kernel of edge ``2 * radius + 1``, the radius drawn from 1..``max_voxels``.
    """

    def __init__(self, keys: KeysCollection, channel: int, max_voxels: int, prob: float = 0.6,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if max_voxels < 1:
            raise ValueError(f"max_voxels must be at least 1, got {max_voxels}")
        self.channel, self.max_voxels = channel, max_voxels
        self._dilate, self._radius = True, 1

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._dilate = bool(self.R.uniform() < 0.5)
        self._radius = int(self.R.randint(1, self.max_voxels + 1))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        operation = dilate if self._dilate else erode
        for key in self.key_iterator(out):
            image = torch.as_tensor(out[key]).clone()
            mask = image[self.channel][None, None].float()
            image[self.channel] = operation(mask, filter_size=2 * self._radius + 1)[0, 0].to(image.dtype)
            out[key] = image
        return out


class LesionBalancedCentresd(MapTransform):
    """Patch-centre candidates that give every lesion the same share of the tumor patches.

    The thesis samples tumor patches around tumor voxels drawn uniformly, so a 40 mL tumor is a patch centre
    about 100 times as often as a 0.4 mL lesion, and the model learns the small lesions it must also find
    from a handful of patches. Here each 26-connected lesion of ``label_key`` (C, x, y, z) contributes the
    same number of candidates (its voxels repeated cyclically up to the largest lesion's size).

    Writes ``indices_key``: [background candidates, lesion candidates] as flat indices into the spatial
    shape, for ``RandCropByLabelClassesd(indices_key=...)``; background candidates are the voxels outside
    the lesions where channel 0 of ``image_key`` exceeds ``image_threshold`` (as ``RandCropByPosNegLabeld``
    picks its negative centres). Deterministic, so ``CacheDataset`` computes it once per case.
    """

    def __init__(self, label_key: str = "label", image_key: str = "image", indices_key: str = "centre_indices",
                 image_threshold: float = 0.0) -> None:
        MapTransform.__init__(self, [label_key])
        self.label_key, self.image_key, self.indices_key = label_key, image_key, indices_key
        self.image_threshold = image_threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, object]:
        import numpy as np
        from scipy import ndimage

        out = dict(data)
        lesion = np.asarray(out[self.label_key])[0] > 0
        components, n_lesions = ndimage.label(lesion, structure=np.ones((3, 3, 3), dtype=bool))
        flat = components.ravel()
        order = np.argsort(flat, kind="stable")  # lesion voxels grouped by component, in index order
        bounds = np.searchsorted(flat[order], np.arange(1, n_lesions + 2))
        lesions = [order[bounds[i]:bounds[i + 1]] for i in range(n_lesions)]
        share = max((len(voxels) for voxels in lesions), default=0)
        positives = np.concatenate([np.resize(v, share) for v in lesions]) if lesions else np.zeros(0, np.int64)
        image = np.asarray(out[self.image_key])[0]
        negatives = np.flatnonzero(~lesion & (image > self.image_threshold))
        out[self.indices_key] = [negatives, positives]
        return out
