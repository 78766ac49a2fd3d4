"""``livertumor`` command line: one module per sub-command, each over plain functions of the library.

Every command module defines ``register(subparsers)``, which adds its parser and sets ``func`` (called with
the parsed arguments, returns the exit code). Command modules keep heavy imports (torch, MONAI) inside the
functions that need them, so that ``livertumor --help`` stays fast and a missing optional dependency only
affects the sub-commands that use it. Argument parsing lives here only: the library has no argparse.
"""

from __future__ import annotations

import argparse

from LiverTumorSegLib.cli.common import build_registry_parser, run_parsed

# Command modules of this package, in help order.
COMMAND_MODULES = ["dicom", "phantom", "preview", "segment", "export_seg", "serve", "flr", "train", "evaluate", "demo",
                   "demo_models", "models"]


def build_parser() -> argparse.ArgumentParser:
    return build_registry_parser(
        "livertumor", "Liver and liver tumor analysis on CT (LiverTumorAnalysis extension, command line).",
        __name__, COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)
