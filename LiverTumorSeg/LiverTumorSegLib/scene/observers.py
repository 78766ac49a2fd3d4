"""Live updates after edits: observe MRML/VTK objects, coalesce bursts of events into one scheduled update.

The GUI passes ``schedule_update`` (a single-shot ``QTimer.start``); tests and scripts pass nothing and call the
update themselves. No Qt here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator


class DebouncedObserver:
    """Base of the live updaters (measurements, FLR): any observed event marks the updater ``dirty`` and calls
    ``schedule_update()`` once until the next update starts (many events, one update). Events raised while the
    updater writes its own outputs (``with self.writing():``) are ignored, so writing does not loop.

    Observers are kept in named groups so that one group (e.g. the planes) can be replaced on its own; call
    ``remove_observers()`` before dropping the updater.
    """

    def __init__(self, schedule_update: Callable[[], object] | None = None) -> None:
        self.dirty = True
        self._schedule = schedule_update
        self._scheduled = False
        self._writing = False
        self._tags: dict[str, list[tuple[object, int]]] = {}

    def observe(self, group: str, observed: Iterable, events: Iterable[int]) -> None:
        """Observe ``events`` of every object in ``observed``, under ``group`` (replacing what it observed)."""
        self.remove_observers(group)
        events = list(events)
        self._tags[group] = [(item, item.AddObserver(event, self._on_event)) for item in observed for event in events]

    def remove_observers(self, group: str | None = None) -> None:
        """Stop observing ``group`` (default: everything)."""
        for name in [group] if group is not None else list(self._tags):
            for observed, tag in self._tags.pop(name, []):
                observed.RemoveObserver(tag)

    @property
    def observing(self) -> bool:
        return any(self._tags.values())

    def _on_event(self, caller, event) -> None:
        if not self._writing:
            self.mark_dirty()

    def mark_dirty(self) -> None:
        self.dirty = True
        if self._schedule is not None and not self._scheduled:
            self._scheduled = True
            self._schedule()

    def _start_update(self) -> None:
        """Call at the start of an update: events from now on schedule the next one."""
        self.dirty, self._scheduled = False, False

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Ignore the events the updater's own writes raise."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
