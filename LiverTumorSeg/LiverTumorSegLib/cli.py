"""``livertumor`` command line.

Each feature module that offers a sub-command defines ``register_cli(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed arguments, returns the exit code). Feature modules
keep heavy imports (torch, MONAI) inside the functions that need them, so that ``livertumor --help``
stays fast and a missing optional dependency only affects the sub-commands that use it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Feature modules (relative to this package) that register sub-commands, in help order.
COMMAND_MODULES = [
    "dicom_io",
    "phantom",
    "preview",
    "worker",
    "flr",
    "training",
    "evaluation",
    "demo",
    "demo_models",
    "model_registry",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livertumor",
        description="Liver and liver tumor analysis on CT (LiverTumorAnalysis extension, command line).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{module_name}")
        module.register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("livertumor: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
