"""First-use installation of the Python packages a worker needs, after asking the user (Slicer GUI).

As the scripted-module template does it: torch (and torchvision) through the PyTorch extension's PyTorchUtils with
at least ``worker.dependencies.MINIMUM_TORCH`` (the build that fits the machine's GPU), then the module's
``Resources/requirements.txt`` with ``slicer.packaging.pip_ensure`` (Slicer 5.12+), which checks versions and asks
before installing.
"""

from __future__ import annotations

import slicer
from slicer.i18n import tr as _

from LiverTumorSegLib.worker import dependencies


def ensurePythonPackages(requirementsFiles, requester: str, askUser: bool = True, inTesting: bool = False) -> bool:
    """Install torch and the ``requirementsFiles`` when missing or too old. False when the user declines;
    ``RuntimeError`` with a readable reason when an install is impossible or fails. ``inTesting``: a self-test
    installs without asking (``pip_ensure`` skips installs in testing mode unless told otherwise)."""
    if not _ensureTorch(requester, askUser and not inTesting):
        return False
    import slicer.packaging

    requirements = [requirement for path in requirementsFiles
                    for requirement in slicer.packaging.load_requirements(path)]
    try:
        slicer.packaging.pip_ensure(requirements, requester=requester, prompt_install=askUser and not inTesting,
                                    skip_in_testing=not inTesting)
    except RuntimeError:  # the user declined
        return False
    except Exception as error:
        raise RuntimeError(_("Installing the Python packages {packages} failed: {error}").format(
            packages=", ".join(str(r) for r in requirements), error=error)) from error
    return True


def _ensureTorch(requester: str, askUser: bool) -> bool:
    action = dependencies.torch_action(dependencies.installed_version("torch"))
    if action == "ok":
        return True
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise RuntimeError(_("{requester} needs the 'PyTorch' extension. Install it from the Extensions Manager, "
                             "restart Slicer and try again.").format(requester=requester)) from None
    if action == "upgrade":
        raise RuntimeError(_("{requester} needs PyTorch {minimum} or newer; version {installed} is installed. Upgrade "
                             "it in the PyTorch Utils module, restart Slicer and try again.").format(
            requester=requester, minimum=dependencies.MINIMUM_TORCH,
            installed=dependencies.installed_version("torch")))
    if askUser and not slicer.util.confirmOkCancelDisplay(
            _("{requester} needs PyTorch {minimum} or newer, which is not installed yet. Install it now through the "
              "PyTorch extension? This can take several minutes.").format(requester=requester,
                                                                          minimum=dependencies.MINIMUM_TORCH)):
        return False
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=False, torchVersionRequirement=f">={dependencies.MINIMUM_TORCH}")
    if torch is None:
        raise RuntimeError(_("PyTorch could not be installed; see the Python console for details."))
    return True
