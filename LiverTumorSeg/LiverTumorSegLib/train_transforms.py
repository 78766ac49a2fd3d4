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
