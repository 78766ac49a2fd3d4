"""Two "PACS" for the node tests, behind one interface: a real Orthanc (Debian package, REST + DICOM on loopback) and,
where Orthanc cannot be had, pynetdicom's storage SCP with a small file store.

Interface: ``start()``, ``stop()``, ``refuse_node()`` / ``accept_node()`` (refuse, then accept again, the node's
results), ``upload(paths) -> series key``, ``send_series(key) -> (ok, detail)`` (C-STORE of a stored series to the
node, synchronous), ``send_series_async(key) -> handle``, ``wait_sent(handle) -> state``,
``datasets(study_uid, modality) -> [pydicom.Dataset]``, ``aet``, ``dicom_port``, ``name``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
from node_helpers import free_port
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt


class OrthancPacs:
    """Orthanc on loopback with a generated configuration in ``folder``; it knows the node as modality "node"."""

    aet = "ORTHANCTEST"

    def __init__(self, binary: str, folder: Path, node_aet: str, node_port: int) -> None:
        self.binary, self.folder = binary, folder
        self.http_port, self.dicom_port = free_port(), free_port()
        self.name = f"Orthanc ({binary})"
        self.config = {
            "Name": "pytest-orthanc", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"), "StorageCompression": False, "Plugins": [],
            "HttpServerEnabled": True, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomServerEnabled": True, "DicomAet": self.aet,
            "DicomPort": self.dicom_port, "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": False,  # only registered modalities may store ...
            "DicomCheckModalityHost": True,  # ... from their registered host
            "DicomModalities": {"node": [node_aet, "127.0.0.1", node_port]},
            "DicomScuTimeout": 10, "ConcurrentJobs": 2, "SaveJobs": False, "OverwriteInstances": False,
        }
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(self.config, indent=1))
        self.log_path = folder / "orthanc.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([self.binary, str(self.config_path)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.log_path}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer on port {self.http_port} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.read()

    def get(self, path: str):
        return json.loads(self._request("GET", path))

    def post(self, path: str, value):
        return json.loads(self._request("POST", path, json.dumps(value).encode()))

    def upload(self, paths: list[Path]) -> str:
        """POST /instances each file; the Orthanc id of their (one) series."""
        series = {json.loads(self._request("POST", "/instances", Path(p).read_bytes(), "application/dicom"))[
            "ParentSeries"] for p in paths}
        assert len(series) == 1, f"uploaded files belong to {len(series)} series"
        return series.pop()

    def send_series(self, key: str) -> tuple[bool, str]:
        try:
            return True, json.dumps(self.post("/modalities/node/store", {"Resources": [key], "Synchronous": True}))
        except urllib.error.HTTPError as error:
            return False, f"HTTP {error.code}: {error.read().decode(errors='replace')}"

    def send_series_async(self, key: str) -> str:
        return self.post("/modalities/node/store", {"Resources": [key], "Synchronous": False})["ID"]

    def wait_sent(self, job_id: str, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.get(f"/jobs/{job_id}")["State"]
            if state in ("Success", "Failure"):
                return state
            time.sleep(0.05)
        return "Timeout"

    def refuse_node(self) -> None:
        """Forget the node: Orthanc (DicomAlwaysAllowStore false) then refuses its C-STOREs."""
        self._request("DELETE", "/modalities/node")

    def accept_node(self) -> None:
        aet, host, port = self.config["DicomModalities"]["node"]
        self._request("PUT", "/modalities/node", json.dumps({"AET": aet, "Host": host, "Port": port}).encode())

    def datasets(self, study_uid: str, modality: str) -> list[pydicom.Dataset]:
        """Every stored instance of ``modality`` in the study, downloaded and parsed."""
        series_ids = self.post("/tools/find", {"Level": "Series",
                                               "Query": {"StudyInstanceUID": study_uid, "Modality": modality}})
        return [pydicom.dcmread(io.BytesIO(self._request("GET", f"/instances/{instance['ID']}/file")))
                for series_id in series_ids for instance in self.get(f"/series/{series_id}/instances")]


class PynetdicomPacs:
    """pynetdicom's storage SCP storing into ``folder/store``, and an SCU that sends uploaded series to the node."""

    aet = "PYPACS"

    def __init__(self, folder: Path, node_aet: str, node_port: int) -> None:
        self.store, self.uploads = folder / "store", folder / "uploads"
        self.store.mkdir(parents=True, exist_ok=True)
        self.node = (node_aet, node_port)
        self.dicom_port = free_port()
        self.name = "pynetdicom storage SCP"
        self.server = None
        self._lock = threading.Lock()
        self._refused = False

    def start(self) -> None:
        ae = AE(self.aet)
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        if self._refused:
            ae.require_calling_aet = ["SOMEBODYELSE"]
        self.server = ae.start_server(("127.0.0.1", self.dicom_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_store(self, event) -> int:
        with self._lock:
            temporary = self.store / f"{event.dataset.SOPInstanceUID}.tmp"
            temporary.write_bytes(event.encoded_dataset())
            temporary.replace(temporary.with_suffix(".dcm"))
        return 0x0000

    def upload(self, paths: list[Path]) -> str:
        series_uid = str(pydicom.dcmread(str(paths[0]), stop_before_pixels=True).SeriesInstanceUID)
        target = self.uploads / series_uid
        target.mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, target / Path(path).name)
        return series_uid

    def send_series(self, key: str) -> tuple[bool, str]:
        datasets = [pydicom.dcmread(str(p)) for p in sorted((self.uploads / key).iterdir())]
        ae = AE(self.aet)
        for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
            ae.add_requested_context(sop_class)
        assoc = ae.associate("127.0.0.1", self.node[1], ae_title=self.node[0])
        if not assoc.is_established:
            return False, "association not established"
        failures = []
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status and "Status" in status else -1
                if code != 0:
                    failures.append(f"0x{code:04X}")
        finally:
            assoc.release()
        return (not failures), ",".join(failures) or "ok"

    def send_series_async(self, key: str) -> threading.Thread:
        thread = threading.Thread(target=self.send_series, args=(key,))
        thread.start()
        return thread

    def wait_sent(self, handle: threading.Thread, timeout_s: float = 60.0) -> str:
        handle.join(timeout_s)
        return "Timeout" if handle.is_alive() else "Success"

    def refuse_node(self) -> None:
        self._refused = True
        self.server.ae.require_calling_aet = ["SOMEBODYELSE"]

    def accept_node(self) -> None:
        self._refused = False
        self.server.ae.require_calling_aet = []

    def datasets(self, study_uid: str, modality: str) -> list[pydicom.Dataset]:
        with self._lock:
            paths = list(self.store.glob("*.dcm"))
        found = [pydicom.dcmread(str(path)) for path in paths]
        return [ds for ds in found if str(ds.StudyInstanceUID) == study_uid and ds.Modality == modality]
