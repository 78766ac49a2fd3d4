"""Torch networks of the manifest: build from ``ModelEntry.network``, load a checkpoint file.

``entry.network`` is ``{"class": "monai.networks.nets.SegResNet", "args": {...}}``; only the classes
of ``ALLOWED_NETWORKS`` are built (a manifest never makes us import an arbitrary name).
Checkpoint formats (``entry.checkpoint_format``):

- ``state_dict``: a file saved with ``torch.save`` holding either the bare state dict, or a dict with
  the weights under ``"state_dict"`` or ``"model"`` (what our training saves, with the manifest entry
  beside them); read with ``weights_only=True`` (no pickled code is executed);
- ``torchscript``: a ``torch.jit.save`` file (the network is in the file; ``entry.network`` is unused).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from LiverTumorSegLib.models.manifest import ModelEntry

ALLOWED_NETWORKS = (
    "monai.networks.nets.SegResNet",
    "monai.networks.nets.SegResNetDS",
    "monai.networks.nets.UNet",
    "monai.networks.nets.BasicUNet",
    "monai.networks.nets.DynUNet",
    "monai.networks.nets.UNETR",
    "monai.networks.nets.SwinUNETR",
    "LiverTumorSegLib.models.kuleuven.networks.kuleuven_unet",
)
CHECKPOINT_FORMATS = ("state_dict", "torchscript")
WEIGHT_KEYS = ("state_dict", "model")


class NetworkError(ValueError):
    """A network cannot be built, or a checkpoint file does not fit it (message names the file)."""


@dataclass(frozen=True)
class LoadedModel:
    """A manifest entry with its torch module (in eval mode, on the CPU until inference moves it).

    ``stage``: for an entry with a ``pipeline`` (the publisher's own pre- and post-processing), the function
    ``stage(ct, liver_mask, progress, cancel, device) -> mask`` that ``core.cascade`` runs instead of its
    sliding-window inference (``models.kuleuven.stages``); None otherwise.
    """

    entry: ModelEntry
    module: torch.nn.Module
    stage: Callable | None = None


def build_network(entry: ModelEntry) -> torch.nn.Module:
    """Instantiate ``entry.network`` (random weights). Raises ``NetworkError`` for a class not allowed."""
    spec = dict(entry.network)
    class_path = spec.get("class")
    if class_path not in ALLOWED_NETWORKS:
        raise NetworkError(
            f"model {entry.id!r}: network class {class_path!r} is not allowed "
            f"(allowed: {', '.join(ALLOWED_NETWORKS)})"
        )
    module_name, _, class_name = class_path.rpartition(".")
    network_class = getattr(importlib.import_module(module_name), class_name)
    args = dict(spec.get("args", {}))
    in_channels = args.get("in_channels")
    if in_channels is not None and int(in_channels) != len(entry.input_channels):
        raise NetworkError(
            f"model {entry.id!r}: network has in_channels={in_channels} but the entry lists "
            f"{len(entry.input_channels)} input channels {list(entry.input_channels)}"
        )
    try:
        return network_class(**args)
    except (TypeError, ValueError) as error:
        raise NetworkError(f"model {entry.id!r}: cannot build {class_path} with {args}: {error}") from error


def _extract_state_dict(checkpoint: Any, path: Path) -> Mapping[str, Any]:
    """The weights of a loaded ``state_dict`` checkpoint (bare, or under "state_dict"/"model")."""
    if not isinstance(checkpoint, Mapping):
        raise NetworkError(
            f"wrong model file {path}: expected a state dict, found {type(checkpoint).__name__}"
        )
    for key in WEIGHT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state = dict(checkpoint)
    if state and all(name.startswith("module.") for name in state):  # saved from DataParallel
        state = {name[len("module.") :]: value for name, value in state.items()}
    return state


def load_weights(module: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a ``state_dict`` checkpoint into ``module`` strictly; ``NetworkError`` names the file."""
    import torch

    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NetworkError(f"model file {path} does not exist") from None
    except Exception as error:  # unpickling errors have no common base class
        raise NetworkError(f"wrong model file {path}: not a readable torch checkpoint ({error})") from error
    state = _extract_state_dict(checkpoint, path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        summary = str(error).splitlines()[0:4]
        raise NetworkError(
            f"wrong model file {path}: its weights do not fit {type(module).__name__} "
            f"({' '.join(s.strip() for s in summary)})"
        ) from error
    return module


def load_torchscript(path: str | Path) -> torch.nn.Module:
    """Load a TorchScript file on the CPU; ``NetworkError`` names the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise NetworkError(f"model file {path} does not exist")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch raises RuntimeError or ValueError depending on the damage
        raise NetworkError(f"wrong model file {path}: not a TorchScript archive ({error})") from error


def load_model(entry: ModelEntry, path: str | Path) -> LoadedModel:
    """Build and load the model of ``entry`` from ``path`` (already verified by the registry)."""
    if entry.checkpoint_format == "torchscript":
        module = load_torchscript(path)
    elif entry.checkpoint_format == "state_dict":
        module = load_weights(build_network(entry), path)
    else:
        raise NetworkError(
            f"model {entry.id!r}: unknown checkpoint_format {entry.checkpoint_format!r} "
            f"(known: {', '.join(CHECKPOINT_FORMATS)})"
        )
    module.eval()
    stage = None
    if entry.pipeline:
        from LiverTumorSegLib.models.kuleuven.stages import stage_for

        stage = stage_for(entry.pipeline, module)
    return LoadedModel(entry=entry, module=module, stage=stage)
