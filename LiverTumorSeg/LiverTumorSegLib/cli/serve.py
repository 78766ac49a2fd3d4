"""``livertumor serve``: the auto-segmentation DICOM node (``node``) as a command a hospital runs as a service."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from LiverTumorSegLib.cli.common import default_model_ids

PROGRAM = "livertumor serve"
EXIT_OK, EXIT_USAGE, EXIT_START = 0, 2, 3

DESCRIPTION = """\
Auto-segmentation DICOM node. Listens for C-ECHO and C-STORE of CT series; every received instance is written
to disk (fsync'd) under --work before its C-STORE success is answered. A series is complete once the association
that sent it is released and no instance of it arrived for --quiet-seconds. Complete series are segmented one at
a time, in arrival order, by the cascade in the background worker (--liver-model, --tumor-model; a worker running
past --job-timeout-seconds is stopped). The results, a DICOM SEG (Liver, Liver tumor) and a DICOM SR (TID 1500
measurement report: volumes, lesions and their longest axial diameters), both in the CT's study, are sent with
C-STORE to --destination and retried with exponential back-off while it is unreachable or refusing. A job is
deleted from --work only after the destination confirmed every result; after a crash or restart the node resumes
from --work.

Refused: non-CT instances (status 0x0122 SOP class not supported), CT instances without pixel data or plane
geometry (0xA900); a series that is not one regular CT volume (missing slices, gantry tilt, ...) is not segmented
and its job is moved to --work/failed. With --allow, associations from other calling AE titles are rejected.

Log: one line per event (series received, job start/end/failed, results sent, retries, refusals) on stderr and,
with --log-file, appended to that file.
"""
EPILOG = """\
exit codes: 0 stopped by SIGINT/SIGTERM; 2 invalid arguments; 3 could not start (port in use, work folder not
writable, model missing: fetch it with `livertumor models fetch ID`).
work layout: incoming/<SeriesUID>/ (being received), jobs/<NNNNNN>/{input,output,sent,job.json}, failed/<NNNNNN>/
(not segmented, kept for inspection), last_job_number.
example: livertumor serve --ae-title LIVERSEG --port 11112 --destination ORTHANC@pacs.example.org:4242 --work
/var/lib/livertumor-node --allow ORTHANC --log-file /var/log/livertumor-node.log
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    liver_default, tumor_default = default_model_ids()
    parser = subparsers.add_parser("serve", help="auto-segmentation DICOM node: CT in, DICOM SEG + SR back to a PACS",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ae-title", required=True, help="this node's AE title (1-16 characters)")
    parser.add_argument("--port", required=True, type=int, help="TCP port to listen on")
    parser.add_argument("--destination", required=True, metavar="AET@HOST:PORT",
                        help="C-STORE SCP that receives the results (usually the PACS that sent the CT)")
    parser.add_argument("--work", required=True, type=Path, metavar="DIR", help="work folder (all of the node's state)")
    parser.add_argument("--allow", metavar="AET,...", help="accept associations only from these calling AE titles")
    parser.add_argument("--quiet-seconds", type=float, default=5.0, metavar="S",
                        help="a series is complete after its association ended and S s without new instances "
                        "(default 5)")
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    parser.add_argument("--liver-model", default=liver_default, help=f"liver-stage model id (default {liver_default})")
    parser.add_argument("--tumor-model", default=tumor_default, help=f"tumor-stage model id (default {tumor_default})")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) or cpu")
    parser.add_argument("--manifest", type=Path, help="a model manifest other than the module's (research models)")
    parser.add_argument("--job-timeout-seconds", type=float, default=1800.0, metavar="S",
                        help="stop a segmentation running longer than S s; its job fails (default 1800)")
    parser.add_argument("--retry-initial-seconds", type=float, default=2.0, metavar="S",
                        help="first delay before resending to the destination (default 2)")
    parser.add_argument("--retry-max-seconds", type=float, default=300.0, metavar="S",
                        help="longest delay between resends (default 300)")
    parser.add_argument("--log-file", type=Path, help="also append the log to this file")
    parser.add_argument("--verbose", action="store_true", help="debug log, with the worker's progress and pynetdicom's")
    parser.set_defaults(func=_run_cli)


def configure_logging(log_file: Path | None = None, verbose: bool = False) -> None:
    """One line per event, ``2024-01-01 12:00:00,123 INFO message``, on stderr and optionally appended to a file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", handlers=handlers, force=True)
    logging.getLogger("LiverTumorSegLib.node").setLevel(logging.DEBUG if verbose else logging.INFO)
    # pynetdicom logs every failed association itself; the node's own line says it once
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def _checked_options(args: argparse.Namespace):
    """(destination, allow list); ``ValueError`` (one line) for an invalid option."""
    from LiverTumorSegLib.node.sender import Destination

    destination = Destination.parse(args.destination)
    allow = [a.strip() for a in args.allow.split(",") if a.strip()] if args.allow else None
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1-65535, got {args.port}")
    for option in ("quiet_seconds", "job_timeout_seconds", "retry_initial_seconds", "retry_max_seconds"):
        if not getattr(args, option) >= 0 or (option != "quiet_seconds" and getattr(args, option) == 0):
            raise ValueError(f"--{option.replace('_', '-')} must be {'>= 0' if option == 'quiet_seconds' else '> 0'}")
    if args.retry_max_seconds < args.retry_initial_seconds:
        raise ValueError("--retry-max-seconds must be >= --retry-initial-seconds")
    if not args.liver_model:
        raise ValueError("no liver model: give --liver-model")
    return destination, allow


def check_models(model_ids: list[str], manifest: Path | None) -> list:
    """The models' manifest entries; ``ValueError`` naming the model unless every id is in the manifest and its
    weights are on this machine."""
    from LiverTumorSegLib.models import registry
    from LiverTumorSegLib.models.manifest import ManifestError, load_manifest

    models = load_manifest(manifest) if manifest else load_manifest()
    for model_id in model_ids:
        if model_id not in models:
            raise ValueError(f"unknown model {model_id!r}; known: {', '.join(models)}")
        try:
            registry.resolve_model_file(models[model_id], download=False)
        except (registry.RegistryError, ManifestError, OSError) as error:
            raise ValueError(f"model {model_id} is not available: {error}") from error
    return [models[model_id] for model_id in model_ids]


def _run_cli(args: argparse.Namespace) -> int:
    from LiverTumorSegLib.node.segmenter import WorkerSegmenter
    from LiverTumorSegLib.node.server import Node, serve

    try:
        destination, allow = _checked_options(args)
    except ValueError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    log = logging.getLogger("LiverTumorSegLib.node")
    try:
        configure_logging(args.log_file, args.verbose)
        models = [m for m in (args.liver_model, args.tumor_model) if m]
        for entry in check_models(models, args.manifest):
            if entry.demo_only:
                log.warning("model %s is a DEMO model trained on phantoms, not for clinical use; its results say so",
                            entry.id)
        segmenter = WorkerSegmenter(args.liver_model, args.tumor_model, device=args.device,
                                    manifest=str(args.manifest.absolute()) if args.manifest else None,
                                    timeout_s=args.job_timeout_seconds)
        node = Node(args.ae_title, args.port, destination, args.work, segmenter, allow=allow,
                    quiet_s=args.quiet_seconds, bind=args.bind, retry_initial_s=args.retry_initial_seconds,
                    retry_max_s=args.retry_max_seconds)
        log.info("segmentation: models %s on device %s, job timeout %.0f s", ", ".join(models), args.device,
                 args.job_timeout_seconds)
        serve(node)
    except (OSError, ValueError) as error:
        log.error("cannot start: %s", error)
        return EXIT_START
    return EXIT_OK
