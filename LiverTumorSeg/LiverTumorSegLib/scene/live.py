"""Live measurements and live FLR of the module panel: the decisions the widget only wires (no Qt).

- **Which observers exist when**: the measurements updater observes the selected segmentation only while the
  module is shown (``LiveSettings.visible``); the FLR planner, once the user computed an FLR, observes only while
  the module is shown and "Update while editing" is on. Leaving the module removes every observer; entering it
  adds them again and catches up with the edits made meanwhile.
- **What a parameter change re-triggers**: ``sync`` hands the current plane, painted segment and patient
  parameters to the planner, which recomputes only when one of them changed; another segmentation or CT drops
  the updaters made for the old ones.
- **How often**: an edit schedules one update after ``update_delay_ms`` (0 on small volumes, 300 ms on large
  ones): the events of one stroke coalesce and a large volume is measured at most every 300 ms.
- **How an error is reported**: a live update never raises into the GUI callback and never opens a dialog; it
  returns a ``LiveReport`` whose ``error`` the panel shows in a label (``new_error`` is true only the first time
  a message appears, for the log).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from LiverTumorSegLib.scene.flr import FLRPlanner, FLRSceneResult
from LiverTumorSegLib.scene.results import MeasurementsUpdater

LARGE_VOLUME_VOXELS = 8_000_000  # e.g. 256 x 256 x 122: larger volumes are measured at most every THROTTLE_MS
THROTTLE_MS = 300


def update_delay_ms(voxel_count: int) -> int:
    """Milliseconds between the first event of an edit and its live update: 0 up to ``LARGE_VOLUME_VOXELS``
    voxels, ``THROTTLE_MS`` above (one update per burst of events, at most one every 300 ms)."""
    return THROTTLE_MS if voxel_count > LARGE_VOLUME_VOXELS else 0


@dataclass(frozen=True)
class LiveSettings:
    """What the live updates follow: the segmentation and its CT, whether the module is shown, whether the FLR
    follows edits, the resection planes and the FLR parameters (``scene.flr.FLRParameters`` fields)."""

    segmentation_node: object | None
    volume_node: object | None
    visible: bool = True
    live_flr: bool = True
    plane_nodes: tuple = ()
    flr_parameters: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class LiveReport:
    """The outcome of one live update: the table node written (or None: nothing to do), the FLR result, or the
    error message to show in the panel (``new_error``: not shown before)."""

    table_node: object | None = None
    flr: FLRSceneResult | None = None
    error: str | None = None
    new_error: bool = False


class LiveUpdates:
    """The measurements updater and the FLR planner of the module panel, created, re-observed and dropped by
    ``sync``. ``schedule(kind, delay_ms)`` (kind "measurements" or "flr") is how an edit asks for an update: the
    GUI starts a single-shot timer whose timeout calls ``update_measurements()`` / ``update_flr()``."""

    def __init__(self, schedule: Callable[[str, int], object] | None = None) -> None:
        self._schedule = schedule
        self.measurements: MeasurementsUpdater | None = None
        self.planner: FLRPlanner | None = None
        self.settings = LiveSettings(None, None, visible=False)
        self._errors: dict[str, str | None] = {"measurements": None, "flr": None}

    def _scheduler(self, kind: str, volume_node):
        if self._schedule is None:
            return None
        image = volume_node.GetImageData()
        delay = update_delay_ms(image.GetNumberOfPoints() if image is not None else 0)
        return lambda: self._schedule(kind, delay)

    @property
    def observing(self) -> bool:
        return any(updater is not None and updater.observing for updater in (self.measurements, self.planner))

    def sync(self, settings: LiveSettings) -> None:
        """Make the updaters follow ``settings`` (call on every parameter change, on enter and on exit)."""
        self.settings = settings
        segmentation, volume = settings.segmentation_node, settings.volume_node
        inputs_ok = segmentation is not None and volume is not None and volume.GetImageData() is not None
        wanted = settings.visible and inputs_ok
        if self.measurements is not None and (not wanted or self.measurements.segmentation_node is not segmentation
                                              or self.measurements.volume_node is not volume):
            self.measurements.remove_observers()
            self.measurements = None
        if wanted and self.measurements is None:
            self.measurements = MeasurementsUpdater(segmentation, volume,
                                                    schedule_update=self._scheduler("measurements", volume))
            self.measurements.mark_dirty()  # the first table (and the edits made while hidden)
        if self.planner is not None and (self.planner.segmentation_node is not segmentation
                                         or self.planner.reference_volume_node is not volume):
            self.planner.remove_observers()
            self.planner = None
        if self.planner is not None:
            self.planner.set_plane_nodes(settings.plane_nodes)
            self.planner.set_parameters(**settings.flr_parameters)
            self.planner.set_observing(settings.visible and settings.live_flr)

    def stop(self) -> None:
        """Remove every observer and drop the updaters (scene closed, module cleaned up)."""
        for updater in (self.measurements, self.planner):
            if updater is not None:
                updater.remove_observers()
        self.measurements = self.planner = None

    def _report(self, kind: str, error: str | None, **values) -> LiveReport:
        new = error is not None and error != self._errors[kind]
        self._errors[kind] = error
        return LiveReport(error=error, new_error=new, **values)

    def update_measurements(self, force: bool = False) -> LiveReport:
        """Recompute the measurements table if the segments changed (``force``: now); errors become the report's
        message (e.g. no liver segment after a rename or a deletion)."""
        if self.measurements is None:
            return self._report("measurements", None)
        try:
            table = self.measurements.update() if force else self.measurements.update_if_dirty()
        except ValueError as error:
            return self._report("measurements", str(error))
        return self._report("measurements", None, table_node=table or self.measurements.table_node)

    def compute_flr(self) -> FLRSceneResult:
        """The "Compute FLR" button: create the planner for the current settings if needed and compute now.
        Raises ``ValueError`` with a readable message (a user action: the caller may show it)."""
        settings = self.settings
        if self.planner is None:
            self.planner = FLRPlanner(settings.segmentation_node, settings.volume_node,
                                      schedule_update=self._scheduler("flr", settings.volume_node),
                                      plane_nodes=settings.plane_nodes, observe=False, **settings.flr_parameters)
        self.planner.set_observing(settings.visible and settings.live_flr)
        result = self.planner.update()
        self._errors["flr"] = None
        return result

    def update_flr(self) -> LiveReport:
        """Recompute the FLR after an edit or a plane move, when the planner exists and something changed."""
        if self.planner is None:
            return self._report("flr", None)
        try:
            result = self.planner.update_if_dirty()
        except ValueError as error:
            return self._report("flr", str(error))
        return self._report("flr", None, flr=result)
