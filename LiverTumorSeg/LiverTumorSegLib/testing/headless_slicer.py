"""Headless Slicer application state on the ``slicer-core`` wheel (no Qt, no ``slicer.app``).

The wheel ships Slicer's MRML library and module logics but not the application that wires them
together. ``bootstrap()`` does, in Python, what Slicer's ``qSlicerCoreApplication`` and
``qSlicerAbstractCoreModule`` do at startup:

1. create the scene (``vtkMRMLScene``) with the default crosshair node and the application logic
   (``vtkSlicerApplicationLogic``) observing it (``qSlicerCoreApplication::setMRMLScene``);
2. create each module logic, then ``SetModuleShareDirectory``, ``SetMRMLApplicationLogic``,
   ``SetMRMLScene`` (``qSlicerAbstractCoreModule::logic``) and register it on the application logic with
   ``SetModuleLogic(<module name>, logic)`` (``qSlicerModuleFactoryManager``); the Colors logic is
   also the application's colour logic (``SetColorLogic``), which adds the default colour nodes;
3. publish ``slicer.mrmlScene``, ``slicer.modules.<lower-case name>`` (objects with ``logic()``, like
   Slicer's module objects) and ``slicer.moduleNames``, so that ``slicer.util`` helpers such as
   ``arrayFromVolume`` or ``updateSegmentBinaryLabelmapFromArray`` work unchanged.

What the wheel does not ship, and therefore stays empty here: the default colour files
(``share/Slicer-X.Y/ColorFiles``: GenericColors, GenericAnatomyColors, ...), the terminology and anatomic
context dictionaries (``*.term.json``) and the volume display presets (``VolumeDisplayPresets.json``).
The C++ logics report these missing files while they are set up; ``bootstrap()`` keeps those reports in
``HeadlessSlicer.messages`` instead of printing them. ``slicer.util.getModuleLogic`` and
``slicer.util.getModule`` need ``slicer.app`` and are not available.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (module name as in Slicer, logic class in the wheel); Colors first: the others may use its nodes.
MODULE_LOGICS: tuple[tuple[str, str], ...] = (
    ("Colors", "vtkSlicerColorLogic"),
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Terminologies", "vtkSlicerTerminologiesModuleLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Markups", "vtkSlicerMarkupsLogic"),
    ("Tables", "vtkSlicerTablesLogic"),
)

# Slicer's layout below its home directory (Slicer_SHARE_DIR, Slicer_QTLOADABLEMODULES_SHARE_DIR).
SHARE_DIRECTORY = "share/Slicer-5.12"
MODULE_SHARE_DIRECTORY = SHARE_DIRECTORY + "/qt-loadable-modules"


class HeadlessModule:
    """Stands in for Slicer's module object (``slicer.modules.<name>``): ``name``, ``title``, ``logic()``."""

    def __init__(self, name: str, logic: Any) -> None:
        self.name = name
        self.title = name
        self._logic = logic

    def logic(self) -> Any:
        return self._logic

    def __repr__(self) -> str:
        return f"<HeadlessModule {self.name} logic={type(self._logic).__name__}>"


@dataclass
class HeadlessSlicer:
    """The application state ``bootstrap()`` built: scene, application logic, module logics by name."""

    scene: Any
    app_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


_STATE: HeadlessSlicer | None = None


@contextlib.contextmanager
def _captured_vtk_messages(messages: list[str]) -> Iterator[None]:
    """Collect VTK warnings/errors raised inside the block into ``messages`` instead of stderr."""
    import vtk

    previous_window = vtk.vtkOutputWindow.GetInstance()
    previous_cutoff = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    window = vtk.vtkStringOutputWindow()
    vtk.vtkOutputWindow.SetInstance(window)
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        yield
    finally:
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.ConvertToVerbosity(previous_cutoff))
        vtk.vtkOutputWindow.SetInstance(previous_window)
        messages.extend(text.strip() for text in window.GetOutput().split("\n\n\n") if text.strip())


def _home_directory() -> Path:
    """The wheel's package folder plays the role of Slicer's home directory."""
    import slicer_core

    return Path(slicer_core.__file__).resolve().parent


def _create_application(slicer: Any, home: Path) -> tuple[Any, Any]:
    """Scene with its crosshair and the application logic, as ``qSlicerCoreApplication`` sets them up."""
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetHomeDirectory(str(home))
    app_logic.SetShareDirectory(SHARE_DIRECTORY)
    app_logic.SetMRMLScene(scene)
    return scene, app_logic


def _create_module_logic(slicer: Any, name: str, class_name: str, scene: Any, app_logic: Any, home: Path):
    """One module logic configured and registered as ``qSlicerAbstractCoreModule::logic()`` does."""
    logic = getattr(slicer, class_name)()
    if isinstance(logic, slicer.vtkSlicerModuleLogic):  # the colour logic is a vtkMRMLColorLogic
        logic.SetModuleShareDirectory(str(home / MODULE_SHARE_DIRECTORY / name))
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    if name == "Colors":
        app_logic.SetColorLogic(logic)
    app_logic.SetModuleLogic(name, logic)
    return logic


def _publish(slicer: Any, state: HeadlessSlicer) -> None:
    """Expose the state under the names Slicer's Python environment provides."""
    modules = types.ModuleType("modules", "Headless stand-ins for Slicer's module objects.")
    module_names = types.ModuleType("moduleNames", "Names of the modules set up by the bootstrap.")
    for name, logic in state.logics.items():
        setattr(modules, name.lower(), HeadlessModule(name, logic))
        setattr(module_names, name, name)
    sys.modules["slicer.modules"] = modules
    sys.modules["slicer.moduleNames"] = module_names
    slicer.modules = modules
    slicer.moduleNames = module_names
    slicer.mrmlScene = state.scene


def bootstrap() -> HeadlessSlicer:
    """Create the headless application once and return it (later calls return the same state).

    Afterwards ``slicer.mrmlScene`` is the application scene and ``slicer.modules.<name>.logic()`` gives
    the module logics of ``MODULE_LOGICS`` (``colors``, ``volumes``, ``terminologies``,
    ``segmentations``, ``subjecthierarchy``, ``markups``, ``tables``), each with that scene.
    """
    global _STATE
    if _STATE is not None:
        return _STATE
    import slicer

    home = _home_directory()
    messages: list[str] = []
    with _captured_vtk_messages(messages):
        scene, app_logic = _create_application(slicer, home)
        logics = {
            name: _create_module_logic(slicer, name, class_name, scene, app_logic, home)
            for name, class_name in MODULE_LOGICS
        }
    _STATE = HeadlessSlicer(scene, app_logic, logics, messages)
    _publish(slicer, _STATE)
    return _STATE


def new_scene() -> Any:
    """Close the application scene as Slicer's "Close Scene" does and return it, empty, for a new case.

    ``Clear(0)`` removes every data, display and storage node but keeps the singleton nodes and the
    default colour tables, which the module logics rely on.
    """
    scene = bootstrap().scene
    scene.Clear(0)
    return scene
