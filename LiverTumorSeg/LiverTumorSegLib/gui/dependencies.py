"""First-use installation of the Python packages a worker needs, after asking the user (Slicer GUI)."""

from __future__ import annotations

import importlib.metadata

import slicer
from slicer.i18n import tr as _

from LiverTumorSegLib.worker import dependencies


def ensurePythonPackages(requirements: dict, purpose: str, askUser: bool = True) -> bool:
    """Install the missing ``requirements`` (import name -> pip requirement) after asking: torch and
    torchvision through the PyTorch extension, the rest with ``slicer.util.pip_install``. False when the
    user declines; ``RuntimeError`` with a readable reason when an install fails."""
    missing = dependencies.missing_modules(requirements)
    if not missing:
        return True
    if askUser and not slicer.util.confirmOkCancelDisplay(
            _("{purpose} needs these Python packages, which are not installed yet: {packages}. "
              "Install them now? This can take several minutes.").format(purpose=purpose,
                                                                        packages=", ".join(missing))):
        return False
    if set(missing) & set(dependencies.PYTORCH_EXTENSION_PACKAGES):
        _installTorch(missing)
    pipRequirements = dependencies.pip_requirements(missing, requirements)
    if pipRequirements:
        try:
            slicer.util.pip_install(pipRequirements)
        except Exception as error:
            raise RuntimeError(_("Installing {packages} failed: {error}").format(
                packages=" ".join(pipRequirements), error=error)) from error
    return True


def _installTorch(missing: list[str]) -> None:
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise RuntimeError(_("This module needs the 'PyTorch' extension. Install it from the Extensions "
                             "Manager, restart Slicer and press Run again.")) from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    installedTorch = importlib.metadata.version("torch") if torchLogic.torchInstalled() else None
    # installTorch installs torch and torchvision; with torch present only the matching torchvision is added
    torchRequirement = dependencies.pytorch_extension_torch_requirement(missing, installedTorch)
    if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=torchRequirement) is None:
        raise RuntimeError(_("PyTorch could not be installed; see the Python console for details."))
