from LiverTumorSegLib import dependencies


def test_missing_modules_reports_only_absent_packages():
    requirements = {"json": "json", "no_such_module_xyz": "no-such-package>=1"}
    assert dependencies.missing_modules(requirements) == ["no_such_module_xyz"]


def test_pip_requirements_leave_torch_to_the_pytorch_extension():
    assert dependencies.pip_requirements(["torch", "monai"]) == ["monai>=1.4"]


def test_everything_the_worker_needs_is_installed_in_the_test_environment():
    assert dependencies.missing_modules() == []
