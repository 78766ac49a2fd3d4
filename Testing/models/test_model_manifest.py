"""Model manifest: the shipped models.json against its JSON Schema, the entries' facts, ModelEntry round trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from LiverTumorSegLib.models.manifest import (
    ManifestError,
    ModelEntry,
    load_manifest,
)
from LiverTumorSegLib.resources import MANIFEST_FILE, SCHEMA_FILE

SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)
MODEL_VALIDATOR = Draft202012Validator(
    {**SCHEMA, "$ref": "#/$defs/model", "required": [], "properties": {}, "additionalProperties": True}
)
DOCUMENT = json.loads(MANIFEST_FILE.read_text(encoding="utf-8"))
EXAMPLES = SCHEMA["examples"][0]["models"]


def errors(instance, validator=MODEL_VALIDATOR) -> list[str]:
    return [error.message for error in validator.iter_errors(instance)]


def test_schema_is_valid_draft_2020_12():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_shipped_manifest_validates_and_loads():
    assert errors(DOCUMENT, VALIDATOR) == []
    entries = load_manifest()
    assert list(entries) == [data["id"] for data in DOCUMENT["models"]]
    assert {"monai-wholebody-ct-lowres", "sam-vit-b"} <= set(entries)


def test_every_shipped_entry_has_checksum_license_training_data():
    for entry in load_manifest().values():
        assert entry.sha256 or entry.md5 or entry.pypi_wheel["member_sha256"], entry.id
        assert entry.license not in ("", "unknown") and entry.training_data not in ("", "unknown"), entry.id
        assert entry.url is None or entry.url.startswith("https://"), entry.id
        if entry.demo_only:
            assert entry.sha256 and entry.size_bytes and entry.card and entry.local_file().is_file(), entry.id
            assert "DEMO" in entry.display_name


def test_kuleuven_entries_name_the_wheel_its_members_checksums_licence_and_citation():
    """The published facts of pyliverlesionseg 0.3 (measured on the wheel from PyPI)."""
    members = {"kuleuven-liver-ct": ("model_unet_ct_mr_liv_seg_resize_1.5mm_med_3_resize_3mm_20201011_dice_loss_val_"
                                     "binary_dice_mean.hdf5", "591ea17c", "liver"),
               "kuleuven-lesion-ct": ("model_unet_ct_mr_lesion_seg_resize_1mm_1mm_3mm_20220207_dice_loss_val_binary_"
                                      "dice_mean.hdf5", "0dc9bc87", "lesion")}
    manifest = load_manifest()
    for model_id, (member, sha_start, config) in members.items():
        entry = manifest[model_id]
        wheel = entry.pypi_wheel
        assert (wheel["package"], wheel["version"], wheel["file"]) == ("pyliverlesionseg", "0.3",
                                                                       "pyliverlesionseg-0.3-py3-none-any.whl")
        assert wheel["sha256"].startswith("ffe1576a") and wheel["size_bytes"] == 27_475_937
        assert wheel["member"] == f"pyliverlesionseg/trained_models/{member}"
        assert wheel["member_sha256"].startswith(sha_start) and wheel["config"] == config
        assert entry.license == "Apache-2.0" and "Robben" in entry.citation and entry.card
        assert entry.pipeline == f"kuleuven_{config}" and entry.url is None and entry.local_path is None
        assert (entry.manifest_dir and (Path(entry.manifest_dir) / entry.card).is_file()), entry.card
    assert "Tang" in manifest["kuleuven-liver-ct"].citation


def test_one_default_per_stage_and_no_default_is_a_demo_only_model():
    from LiverTumorSegLib.models.selection import default_model_id

    manifest = load_manifest()
    defaults = [entry for entry in manifest.values() if entry.default]
    assert sorted(entry.task for entry in defaults) == ["liver", "tumor"]
    assert not any(entry.demo_only for entry in defaults)
    assert default_model_id(manifest, "liver") == "demo-liver-segresnet"
    assert default_model_id(manifest, "tumor") == "kuleuven-lesion-ct"
    liver = manifest["demo-liver-segresnet"]
    assert "phantom-trained" in liver.display_name and "real CT" in liver.display_name  # says what it is


def test_wholebody_entry_matches_the_monai_bundle():
    entry = load_manifest()["monai-wholebody-ct-lowres"]
    assert entry.task == "multi-organ" and entry.liver_label() == 5
    assert entry.md5 == "dbdebeae650f4fb5ea7f4ad01e0d2431" and entry.sha256 is None  # md5 is all NVIDIA gives
    args = entry.network["args"]
    assert (args["in_channels"], args["out_channels"], args["init_filters"]) == (1, 105, 32)
    assert (args["blocks_down"], args["blocks_up"]) == ([1, 2, 2, 4], [1, 1, 1])
    assert entry.spacing_mm == (3.0, 3.0, 3.0) and entry.roi_size == (96, 96, 96) and entry.sw_overlap == 0.25
    assert dict(entry.intensity) == {"type": "normalize_nonzero_scale", "out_min": -1.0, "out_max": 1.0}
    assert not entry.demo_only and entry.license == "Apache-2.0" and "TotalSegmentator" in entry.training_data


def test_wholebody_network_args_fit_the_published_file_size():
    """The float32 weights of the declared SegResNet are the 75.2 MB the publisher's file has."""
    from LiverTumorSegLib.models.networks import build_network

    entry = load_manifest()["monai-wholebody-ct-lowres"]
    module = build_network(entry)
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert weight_bytes / 1e6 == pytest.approx(entry.extra["approx_size_mb"], rel=0.005)


def test_sam_entry_is_the_official_vit_b_checkpoint():
    entry = load_manifest()["sam-vit-b"]
    assert entry.task == "encoder" and entry.url.endswith("/segment_anything/sam_vit_b_01ec64.pth")
    assert entry.size_bytes == 375042383 and entry.md5.startswith("01ec64")  # the file name carries the md5
    assert entry.intensity["type"] == "sam_pixel" and entry.intensity["image_size"] == 1024
    assert entry.network["args"]["embed_dim"] == 768 and entry.extra["embedding_shape"] == [256, 64, 64]


def test_schema_examples_are_the_thesis_demo_models():
    assert errors({"schema_version": 1, "models": EXAMPLES}, VALIDATOR) == []
    liver, tumor = (ModelEntry.from_dict(data) for data in EXAMPLES)
    for entry in (liver, tumor):
        args = entry.network["args"]
        assert (args["init_filters"], args["blocks_down"], args["blocks_up"], args["out_channels"]) == (
            16,
            [1, 2, 2, 4],
            [1, 1, 1],
            2,
        )
        assert (
            entry.spacing_mm == (1.0, 1.0, 2.5)
            and entry.roi_size == (128, 128, 48)
            and entry.sw_overlap == 0.4
        )
        assert (entry.intensity["hu_min"], entry.intensity["hu_max"]) == (-100, 200)
        assert entry.demo_only and entry.card and "DEMO ONLY" in entry.display_name
    assert liver.input_channels == ("ct",) and tumor.input_channels == ("ct", "liver_mask")


@pytest.mark.parametrize("data", DOCUMENT["models"] + EXAMPLES, ids=lambda d: d["id"])
def test_entry_round_trip(data):
    entry = ModelEntry.from_dict(data)
    given = {key: value for key, value in data.items() if value is not None}
    assert {key: entry.to_dict()[key] for key in given} == given  # (defaults are added, nothing is lost)
    assert ModelEntry.from_dict(entry.to_dict()) == entry
    assert errors(entry.to_dict()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d.update(input_channels=["ct"]),
            "does not contain items",
        ),  # a tumor stage needs the liver mask
        (lambda d: d.pop("sha256"), "is not valid under any of the given schemas"),
        (lambda d: d.update(sha256="ABC"), "does not match"),
        (lambda d: d.update(local_path="/abs/model.pt"), "does not match"),
        (lambda d: d.update(local_path="demo/../../model.pt"), "does not match"),
        (lambda d: d.pop("card"), "'card' is a required property"),
        (lambda d: d.update(license="unknown"), "should not be valid"),
        (lambda d: d.update(labels={"liver": 1}), "'tumor' is a required property"),
        (
            lambda d: d.update(intensity={"type": "clip_scale", "hu_min": -100}),
            "'hu_max' is a required property",
        ),
        (lambda d: d.update(typo_field=1), "Additional properties are not allowed"),
    ],
)
def test_schema_rejects_bad_entries(change, expected):
    data = copy.deepcopy(EXAMPLES[1])
    change(data)
    assert any(expected in message for message in errors(data)), errors(data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sha256", "xyz", "malformed sha256"),
        ("md5", "0" * 31, "malformed md5"),
        ("local_path", "../outside.pt", "must be relative"),
        ("local_path", "C:\\models\\x.pt", "must be relative"),
    ],
)
def test_from_dict_rejects_bad_digests_and_paths(field, value, message):
    data = dict(EXAMPLES[0], **{field: value})
    with pytest.raises(ManifestError, match=message):
        ModelEntry.from_dict(data, source="test.json")


def test_local_path_is_relative_to_the_manifest_folder(tmp_path):
    (tmp_path / "models.json").write_text(
        json.dumps({"schema_version": 1, "models": EXAMPLES}), encoding="utf-8"
    )
    entries = load_manifest(tmp_path / "models.json")
    assert entries["demo-liver-segresnet"].local_file() == tmp_path / "demo" / "demo_liver_segresnet.pt"
    assert load_manifest()["sam-vit-b"].local_file() is None


def test_load_manifest_errors_name_the_file(tmp_path):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": EXAMPLES + EXAMPLES[:1]}), encoding="utf-8")
    with pytest.raises(ManifestError, match=f"{path}.*duplicate model id 'demo-liver-segresnet'"):
        load_manifest(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ManifestError, match="expected a JSON object"):
        load_manifest(path)
