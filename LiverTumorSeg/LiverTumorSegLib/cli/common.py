"""What the ``livertumor`` and ``tnmstaging`` commands share: the sub-command registry, the run wrapper and
reading an image argument."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import SimpleITK as sitk


def build_registry_parser(prog: str, description: str, package: str, modules: list[str]) -> argparse.ArgumentParser:
    """An argparse parser whose sub-commands come from ``register(subparsers)`` of each of ``package``'s ``modules``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in modules:
        importlib.import_module(f"{package}.{module_name}").register(subparsers)
    return parser


def run_parsed(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the chosen sub-command; Ctrl-C is a cancel (exit 130), not a traceback."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{parser.prog}: cancelled", file=sys.stderr)
        return 130


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
    """The default liver-stage and tumor-stage model ids: the first of each task in the module's manifest."""
    from LiverTumorSegLib.models.manifest import load_manifest

    models = load_manifest()
    return (next((m.id for m in models.values() if m.task == "liver"), None),
            next((m.id for m in models.values() if m.task == "tumor"), None))
