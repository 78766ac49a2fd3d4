"""Building networks from manifest entries and loading checkpoint files (state dict, TorchScript)."""

from __future__ import annotations

import collections

import pytest
import torch

from LiverTumorSegLib.models.manifest import ModelEntry
from LiverTumorSegLib.models.networks import LoadedModel, NetworkError, build_network, load_model

TINY_ARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "init_filters": 4,
    "blocks_down": [1, 1],
    "blocks_up": [1],
    "norm": ["GROUP", {"num_groups": 2}],
}


def make_entry(args=None, **overrides) -> ModelEntry:
    data = {
        "id": "tiny-liver",
        "task": "liver",
        "file_name": "tiny.pt",
        "local_path": "tiny.pt",
        "sha256": "0" * 64,
        "labels": {"liver": 1},
        "network": {"class": "monai.networks.nets.SegResNet", "args": dict(args or TINY_ARGS)},
    }
    data.update(overrides)
    return ModelEntry.from_dict(data)


def outputs(module: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.inference_mode():
        return module.eval()(torch.rand(1, 1, 16, 16, 16))


def test_build_network_makes_the_declared_segresnet():
    network = build_network(make_entry())
    assert type(network).__name__ == "SegResNet"
    assert outputs(network).shape == (1, 2, 16, 16, 16)


@pytest.mark.parametrize("class_path", ["torch.nn.Linear", "os.system", None])
def test_network_classes_outside_the_allow_list_are_refused(class_path):
    entry = make_entry(network={"class": class_path, "args": {}})
    with pytest.raises(NetworkError, match="not allowed"):
        build_network(entry)


def test_in_channels_must_match_the_entry_inputs():
    entry = make_entry(input_channels=["ct", "liver_mask"])
    with pytest.raises(NetworkError, match="in_channels=1.*2 input channels"):
        build_network(entry)


@pytest.mark.parametrize("wrapping", ["bare", "state_dict", "model", "data_parallel"])
def test_state_dict_checkpoints_load_strictly(tmp_path, wrapping):
    entry = make_entry()
    torch.manual_seed(0)
    source = build_network(entry)
    state = source.state_dict()
    if wrapping == "data_parallel":
        checkpoint = collections.OrderedDict((f"module.{k}", v) for k, v in state.items())
    elif wrapping == "bare":
        checkpoint = state
    else:  # what our training saves: weights plus the manifest entry and training state (plain data)
        checkpoint = {wrapping: state, "entry": entry.to_dict(), "epoch": 3, "metrics": {"dsc": [0.5, 0.7]}}
    path = tmp_path / "model.pt"
    torch.save(checkpoint, path)
    loaded = load_model(entry, path)
    assert isinstance(loaded, LoadedModel) and loaded.entry is entry
    assert not loaded.module.training
    torch.testing.assert_close(outputs(loaded.module), outputs(source))


def test_checkpoint_of_another_network_is_a_wrong_model_file(tmp_path):
    other = build_network(make_entry(args={**TINY_ARGS, "init_filters": 8}))
    path = tmp_path / "other_model.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(NetworkError, match=r"wrong model file .*other_model\.pt.*do not fit SegResNet"):
        load_model(make_entry(), path)


def test_file_that_is_not_a_checkpoint_is_a_wrong_model_file(tmp_path):
    path = tmp_path / "download.html"
    path.write_text("<html>rate limit exceeded</html>")
    with pytest.raises(NetworkError, match=r"wrong model file .*download\.html"):
        load_model(make_entry(), path)


class Payload:  # an arbitrary pickled object: refused by weights_only loading
    pass


def test_pickled_code_is_not_loaded(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": build_network(make_entry()).state_dict(), "payload": Payload()}, path)
    with pytest.raises(NetworkError, match=r"wrong model file .*pickled\.pt"):
        load_model(make_entry(), path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(NetworkError, match=r"missing\.pt does not exist"):
        load_model(make_entry(), tmp_path / "missing.pt")


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = build_network(make_entry()).eval()
    path = tmp_path / "scripted.ts"
    with torch.inference_mode():
        torch.jit.save(torch.jit.trace(source, torch.rand(1, 1, 16, 16, 16)), str(path))
    entry = make_entry(checkpoint_format="torchscript", network={})
    loaded = load_model(entry, path)
    torch.testing.assert_close(outputs(loaded.module), outputs(source))
    state_dict_file = tmp_path / "weights.pt"
    torch.save(source.state_dict(), state_dict_file)
    with pytest.raises(NetworkError, match=r"wrong model file .*weights\.pt.*TorchScript"):
        load_model(entry, state_dict_file)


def test_unknown_checkpoint_format_is_refused(tmp_path):
    with pytest.raises(NetworkError, match="checkpoint_format 'onnx'"):
        load_model(make_entry(checkpoint_format="onnx"), tmp_path / "x.onnx")
