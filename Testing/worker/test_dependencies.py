from LiverTumorSegLib.worker import dependencies


def test_missing_modules_reports_only_absent_packages():
    requirements = {"json": "json", "no_such_module_xyz": "no-such-package>=1"}
    assert dependencies.missing_modules(requirements) == ["no_such_module_xyz"]


def test_pip_requirements_leave_torch_to_the_pytorch_extension():
    assert dependencies.pip_requirements(["torch", "monai"]) == ["monai>=1.4"]


def test_torch_comes_from_the_pytorch_extension_and_a_missing_torchvision_matches_the_installed_torch():
    plan = dependencies.pytorch_extension_torch_requirement
    assert plan(["monai", "scipy"], "2.5.1+cu121") is None
    assert plan(["torch", "torchvision"], None) == ""
    assert plan(["torchvision"], "2.5.1+cu121") == "==2.5.1"
    assert plan(["torchvision", "segment_anything"], "2.14.1") == "==2.14.1"


def test_everything_the_worker_needs_is_installed_in_the_test_environment():
    assert dependencies.missing_modules() == []
