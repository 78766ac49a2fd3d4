"""A background run (``scene.run.BackgroundRun``) watched from the GUI: a QTimer drains its progress into a
progress bar and a label; when the worker ends, ``finish()`` brings the result in and one callback gets it.

A cancelled run (``core.cancel.Cancelled``, recognised by type) only updates the label; a failure also shows
one error dialog. Cancel returns at once (the worker tree is ended in the background, ``worker.process``); a run
whose input left the scene or is no longer the selected input is abandoned (``scene.run.BackgroundRun.stale_reason``):
nothing is imported.
"""

from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _

from LiverTumorSegLib.core.cancel import Cancelled

POLL_INTERVAL_MS = 200


class RunPoller:
    """Polls one run at a time. ``progressBar`` and ``statusLabel`` are Qt widgets; ``onFinished(result)`` is
    called after a successful ``finish()``; ``onEnded()`` after every end (success, failure or cancel);
    ``onLogLine(line)`` gets each progress message and, at the end, the worker's other output lines."""

    def __init__(self, progressBar, statusLabel, failureTitle: str, onFinished, onEnded=None, onLogLine=None):
        self.progressBar, self.statusLabel, self.failureTitle = progressBar, statusLabel, failureTitle
        self.onFinished, self.onEnded, self.onLogLine = onFinished, onEnded, onLogLine
        self.run = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self._poll)

    @property
    def running(self) -> bool:
        return self.run is not None

    def start(self, run) -> None:
        self.run = run
        self.progressBar.value = 0
        self.timer.start()

    def cancel(self) -> None:
        """Ask the run to stop; returns at once. The poll that sees the worker end reports the cancel."""
        if self.run is not None:
            self.run.cancel()
            self.statusLabel.text = _("Cancelling...")

    def stop(self, reason: str = "", notify: bool = False) -> None:
        """Abandon the run and stop watching it; nothing is imported (module cleanup, scene close). Returns at
        once. ``notify``: call ``onEnded()`` (the widget stays; not during cleanup)."""
        self.timer.stop()
        run, self.run = self.run, None
        if run is not None:
            run.abandon()
            self.statusLabel.text = reason or _("Cancelled.")
            if notify and self.onEnded:
                self.onEnded()

    def abandonIfStale(self, currentVolumeNode=None) -> bool:
        """Abandon the run when its input left the scene or ``currentVolumeNode`` is another volume; True if so."""
        reason = self.run.stale_reason(currentVolumeNode) if self.run is not None else None
        if reason:
            self.stop(reason, notify=True)
        return bool(reason)

    def _poll(self) -> None:
        for event in self.run.poll():
            if event.fraction is not None:
                self.progressBar.value = int(round(100 * event.fraction))
            self.statusLabel.text = f"{event.stage}: {event.message}"
            if self.onLogLine:
                self.onLogLine(f"[{event.stage}] {event.message}")
        if self.run.running():
            return
        self.timer.stop()
        run, self.run = self.run, None
        if self.onLogLine:
            for line in run.log_lines():
                self.onLogLine(line)
        try:
            result = run.finish()
        except Cancelled as error:
            self.statusLabel.text = str(error)
        except Exception as error:  # shown to the user; the scene is unchanged
            self.statusLabel.text = str(error)
            slicer.util.errorDisplay(f"{self.failureTitle}: {error}")
        else:
            self.onFinished(result)
        if self.onEnded:
            self.onEnded()
