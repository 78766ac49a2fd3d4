"""What the ``livertumor`` and ``tnmstaging`` commands share: the sub-command registry, the run wrapper and
reading an image argument."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from pathlib import Path

import SimpleITK as sitk

from LiverTumorSegLib.io.atomic import OutputError, describe_os_error
from LiverTumorSegLib.worker.runner import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_CODES_HELP


def build_registry_parser(prog: str, description: str, package: str, modules: list[str]) -> argparse.ArgumentParser:
    """An argparse parser whose sub-commands come from ``register(subparsers)`` of each of ``package``'s ``modules``;
    every parser's help ends with the exit codes."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EXIT_CODES_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in modules:
        importlib.import_module(f"{package}.{module_name}").register(subparsers)
    _add_exit_codes(parser)
    return parser


def _add_exit_codes(parser: argparse.ArgumentParser) -> None:
    """Set ``EXIT_CODES_HELP`` as the epilog of ``parser``'s sub-commands (recursively) that have none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not sub.epilog:
                    sub.epilog = EXIT_CODES_HELP
                _add_exit_codes(sub)


def _interrupt(signum, frame) -> None:
    """SIGTERM handler: stop as Ctrl-C does (outputs are written all at once or not at all)."""
    raise KeyboardInterrupt


def run_parsed(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the chosen sub-command. Ctrl-C and SIGTERM are a cancel (one line, exit 130); an
    output that cannot be written and any ``OSError`` (permission, disk full, missing file) end in one line and
    exit 2 instead of a traceback."""
    args = parser.parse_args(argv)
    name = " ".join(part for part in (parser.prog, getattr(args, "command", None)) if part)
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{name}: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except OutputError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader of stdout left (``| head``): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"{name}: error: {where}{describe_os_error(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def read_image(path: Path, what: str) -> sitk.Image:
    """The image file ``path`` given for ``what`` (an option name or a description); ``ValueError`` naming the
    file when it is missing or not an image SimpleITK can read."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path}: no such file")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"{what} {path}: cannot read: {str(error).strip().splitlines()[-1]}") from error


def default_model_ids() -> tuple[str | None, str | None]:
    """The default liver-stage and tumor-stage model ids of the module's manifest (``models.selection``)."""
    from LiverTumorSegLib.models.manifest import load_manifest
    from LiverTumorSegLib.models.selection import default_model_id

    models = load_manifest()
    return default_model_id(models, "liver") or None, default_model_id(models, "tumor") or None
