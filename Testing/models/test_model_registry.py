"""Model registry: cache folder, verified downloads (resume, restart, retries, cancel), import, CLI.

Downloads run against a local ``http.server`` on 127.0.0.1 (a thread per test module, shut down at the
end and by a safety timer) that can drop a connection midway, ignore ``Range`` or fail on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from LiverTumorSegLib import cli
from LiverTumorSegLib.models import registry
from LiverTumorSegLib.models.manifest import ModelEntry

PAYLOAD = bytes((i * 7919 + 13) % 251 for i in range(300_000))  # several 64 KiB chunks
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """GET /<mode>/<name>: ok (honours Range), drop-once, ignore-range, flaky (503 twice), else 404."""

    timeout = 10

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        server = self.server
        mode, _, name = self.path.strip("/").partition("/")
        with server.lock:
            server.requests.append((self.path, self.headers.get("Range")))
            count = sum(1 for path, _ in server.requests if path == self.path)
        body = server.files.get(name)
        if body is None or mode not in ("ok", "drop-once", "ignore-range", "flaky"):
            self.send_error(404, "Not Found")
            return
        if mode == "flaky" and count <= 2:
            self.send_error(503, "Service Unavailable")
            return
        start = _range_start(self.headers.get("Range"))
        if start is not None and mode != "ignore-range" and start < len(body):
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "drop-once" and count == 1:
            self.wfile.write(body[: len(body) // 2])  # then close: the client sees a short body
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


def _range_start(header: str | None) -> int | None:
    if not header or not header.startswith("bytes="):
        return None
    return int(header[len("bytes=") :].split("-")[0])


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.files = {"model.pt": PAYLOAD, "other.pt": PAYLOAD[::-1]}
    httpd.requests = []
    httpd.lock = threading.Lock()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    safety = threading.Timer(120, httpd.shutdown)  # never outlives a stuck test session
    safety.daemon = True
    safety.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    safety.cancel()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def requests(server):
    with server.lock:
        server.requests.clear()
    return server.requests


def make_entry(
    url: str | None = None,
    *,
    sha256: str | None = SHA256,
    md5: str | None = None,
    size: int | None = len(PAYLOAD),
    local_path: str | None = None,
    manifest_dir=None,
) -> ModelEntry:
    data = {
        "id": "test-model",
        "task": "liver",
        "file_name": "model.pt",
        "labels": {"liver": 1},
        "network": {"class": "monai.networks.nets.SegResNet", "args": {}},
        "license": "Apache-2.0",
        "training_data": "test bytes",
        "url": url,
        "local_path": local_path,
        "sha256": sha256,
        "md5": md5,
        "size_bytes": size,
    }
    return ModelEntry.from_dict({k: v for k, v in data.items() if v is not None}, manifest_dir=manifest_dir)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(registry.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert registry.cache_dir() == Path.home() / ".cache" / "LiverTumorAnalysis" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "xdg" / "LiverTumorAnalysis" / "models"
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "models"))
    assert registry.cache_dir() == tmp_path / "models"
    assert (
        registry.cached_path(make_entry("http://x/model.pt"))
        == tmp_path / "models" / "test-model" / "model.pt"
    )


def test_file_digest_matches_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert registry.file_digest(path, "sha256") == SHA256
    assert registry.file_digest(path, "md5") == MD5


def test_download_good_file_reports_monotonic_progress(server, requests, tmp_path):
    seen: list[tuple[int, int | None]] = []
    dest = tmp_path / "cache" / "model.pt"
    path = registry.download_file(
        f"{server.base}/ok/model.pt",
        dest,
        sha256=SHA256,
        size_bytes=len(PAYLOAD),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert path == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("model.pt.part").exists()
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == len(PAYLOAD) and len(done) > 3
    assert {t for _, t in seen} == {len(PAYLOAD)}
    assert requests == [("/ok/model.pt", None)]


def test_corrupted_download_raises_and_leaves_nothing(server, requests, tmp_path):
    cache = tmp_path / "cache"
    entry = make_entry(f"{server.base}/ok/other.pt")  # the server sends other bytes than the entry's digest
    with pytest.raises(registry.ChecksumMismatchError) as caught:
        registry.resolve_model_file(entry, cache=cache)
    message = str(caught.value)
    assert "model.pt" in message and SHA256 in message
    assert hashlib.sha256(PAYLOAD[::-1]).hexdigest() in message
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_interrupted_transfer_resumes_with_range(server, requests, tmp_path):
    dest = tmp_path / "model.pt"
    path = registry.download_file(
        f"{server.base}/drop-once/model.pt", dest, sha256=SHA256, size_bytes=len(PAYLOAD), backoff_s=0.01
    )
    assert registry.file_digest(path, "sha256") == SHA256
    assert requests == [("/drop-once/model.pt", None), ("/drop-once/model.pt", f"bytes={len(PAYLOAD) // 2}-")]


def test_server_ignoring_range_restarts_from_zero(server, requests, tmp_path):
    dest = tmp_path / "model.pt"
    dest.with_name("model.pt.part").write_bytes(b"\xff" * 1000)  # appending to this would corrupt the file
    registry.download_file(
        f"{server.base}/ignore-range/model.pt", dest, sha256=SHA256, size_bytes=len(PAYLOAD)
    )
    assert dest.read_bytes() == PAYLOAD
    assert requests == [("/ignore-range/model.pt", "bytes=1000-")]


def test_missing_file_is_a_download_error_naming_the_url(server, requests, tmp_path):
    url = f"{server.base}/ok/absent.pt"
    with pytest.raises(registry.DownloadError, match="404") as caught:
        registry.download_file(url, tmp_path / "absent.pt", sha256=SHA256, backoff_s=0.01)
    assert url in str(caught.value)
    assert len(requests) == 1  # a 404 is not retried


def test_server_errors_are_retried_with_backoff(server, requests, tmp_path):
    path = registry.download_file(
        f"{server.base}/flaky/model.pt", tmp_path / "model.pt", sha256=SHA256, backoff_s=0.01
    )
    assert path.read_bytes() == PAYLOAD and len(requests) == 3


def test_unreachable_server_fails_after_retries(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/model.pt"
    with pytest.raises(registry.DownloadError, match="after 3 attempts") as caught:
        registry.download_file(
            url, tmp_path / "model.pt", sha256=SHA256, retries=2, backoff_s=0.01, timeout_s=2
        )
    assert url in str(caught.value)


def test_md5_only_entry_is_verified_with_md5(server, requests, tmp_path):
    entry = make_entry(f"{server.base}/ok/model.pt", sha256=None, md5=MD5, size=None)
    path = registry.resolve_model_file(entry, cache=tmp_path)
    assert path.read_bytes() == PAYLOAD
    wrong = make_entry(f"{server.base}/ok/other.pt", sha256=None, md5=MD5, size=None)
    with pytest.raises(registry.ChecksumMismatchError, match=f"md5 .*expected {MD5}"):
        registry.resolve_model_file(wrong, cache=tmp_path / "other")


def test_cancel_keeps_part_and_next_call_resumes(server, requests, tmp_path):
    cancel = threading.Event()
    entry = make_entry(f"{server.base}/ok/model.pt")

    def stop_after_first_chunk(done: int, total: int | None) -> None:
        if done > 0:
            cancel.set()

    with pytest.raises(registry.DownloadCancelled):
        registry.resolve_model_file(entry, cache=tmp_path, progress=stop_after_first_chunk, cancel=cancel)
    target = registry.cached_path(entry, tmp_path)
    part = target.with_name(target.name + ".part")
    kept = part.stat().st_size
    assert not target.exists() and 0 < kept < len(PAYLOAD)
    assert part.read_bytes() == PAYLOAD[:kept]
    path = registry.resolve_model_file(entry, cache=tmp_path)
    assert path.read_bytes() == PAYLOAD and not part.exists()
    assert requests[-1] == ("/ok/model.pt", f"bytes={kept}-")


def test_corrupted_cache_file_is_reported_and_replaced(server, requests, tmp_path):
    entry = make_entry(f"{server.base}/ok/model.pt")
    target = registry.cached_path(entry, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.warns(registry.CorruptCacheWarning, match="corrupted cache file"):
        with pytest.raises(registry.ModelNotAvailableError) as caught:
            registry.resolve_model_file(entry, cache=tmp_path, download=False)
    assert entry.url in str(caught.value) and "livertumor models import test-model" in str(caught.value)
    assert not target.exists() and requests == []
    target.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.warns(registry.CorruptCacheWarning):
        path = registry.resolve_model_file(entry, cache=tmp_path)
    assert path.read_bytes() == PAYLOAD and len(requests) == 1
    assert (
        registry.resolve_model_file(entry, cache=tmp_path, download=False) == target
    )  # verified, no request
    assert len(requests) == 1


def test_import_model_file_good_and_bad(tmp_path):
    entry = make_entry("https://example.invalid/model.pt")
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    good.write_bytes(PAYLOAD)
    bad.write_bytes(PAYLOAD[::-1])
    cache = tmp_path / "cache"
    with pytest.raises(registry.ChecksumMismatchError, match="bad.pt"):
        registry.import_model_file(entry, bad, cache=cache)
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []
    path = registry.import_model_file(entry, good, cache=cache)
    assert path == registry.cached_path(entry, cache) and path.read_bytes() == PAYLOAD
    assert registry.resolve_model_file(entry, cache=cache, download=False) == path
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


def test_local_path_entry_is_verified_beside_its_manifest(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "model.pt").write_bytes(PAYLOAD)
    entry = make_entry(local_path="demo/model.pt", manifest_dir=tmp_path)
    assert (
        registry.resolve_model_file(entry, cache=tmp_path / "cache", download=False)
        == tmp_path / "demo" / "model.pt"
    )
    (tmp_path / "demo" / "model.pt").write_bytes(PAYLOAD[:1000])
    with pytest.raises(registry.ChecksumMismatchError, match="size 1000 bytes, expected 300000"):
        registry.resolve_model_file(entry, cache=tmp_path / "cache")
    (tmp_path / "demo" / "model.pt").unlink()
    with pytest.raises(registry.ModelNotAvailableError, match="should ship at"):
        registry.resolve_model_file(entry, cache=tmp_path / "cache")


def _write_manifest(folder: Path, url: str) -> Path:
    entry = make_entry(url).to_dict()
    path = folder / "models.json"
    path.write_text(json.dumps({"schema_version": 1, "models": [entry]}), encoding="utf-8")
    return path


def _run_models(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_cli_list_fetch_verify_import(server, requests, tmp_path, capsys):
    manifest = _write_manifest(tmp_path, f"{server.base}/ok/model.pt")
    common = ["models", "--manifest", str(manifest), "--cache", str(tmp_path / "cache")]
    code, rows, _ = _run_models([*common, "list"], capsys)
    assert code == 0 and rows == [
        {
            "id": "test-model",
            "title": "test-model",
            "display_name": "test-model",
            "task": "liver",
            "demo_only": False,
            "available": False,
            "path": None,
            "source": "url",
            "license": "Apache-2.0",
            "default": False,
        }
    ]
    code, rows, err = _run_models([*common, "verify", "test-model"], capsys)
    assert code == 1 and "livertumor models import test-model" in err
    code, rows, _ = _run_models([*common, "fetch", "test-model", "--quiet"], capsys)
    assert code == 0 and rows[0]["verified"] and Path(rows[0]["path"]).read_bytes() == PAYLOAD
    code, rows, _ = _run_models([*common, "list"], capsys)
    assert rows[0]["available"] is True
    code, rows, _ = _run_models([*common, "verify", "test-model"], capsys)
    assert code == 0 and rows[0]["algorithm"] == "sha256"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    code, rows, err = _run_models([*common, "import", "test-model", str(bad)], capsys)
    assert code == 1 and "size 11 bytes" in err and rows == []
    code, rows, err = _run_models([*common, "fetch", "no-such-model"], capsys)
    assert code == 2 and "unknown model 'no-such-model'" in err


def test_cli_subprocess_fetch_with_progress(server, requests, tmp_path):
    manifest = _write_manifest(tmp_path, f"{server.base}/ok/model.pt")
    env = dict(os.environ, LIVERTUMOR_MODEL_DIR=str(tmp_path / "env-cache"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "LiverTumorSegLib.cli",
            "models",
            "--manifest",
            str(manifest),
            "fetch",
            "test-model",
        ],
        capture_output=True,
        text=True, encoding="utf-8",
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(row["path"]) == tmp_path / "env-cache" / "test-model" / "model.pt"
    assert Path(row["path"]).read_bytes() == PAYLOAD
    assert "model.pt" in result.stderr and "100%" in result.stderr  # the tqdm bar
