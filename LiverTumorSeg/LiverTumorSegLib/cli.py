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


def build_registry_parser(prog: str, description: str, package: str, modules: list[str]) -> argparse.ArgumentParser:
    """An argparse parser whose sub-commands come from ``register_cli`` of each of ``package``'s ``modules``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in modules:
        importlib.import_module(f"{package}.{module_name}").register_cli(subparsers)
    return parser


def run_parsed(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse ``argv`` and run the chosen sub-command; Ctrl-C is a cancel (exit 130), not a traceback."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{parser.prog}: cancelled", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    return build_registry_parser(
        "livertumor", "Liver and liver tumor analysis on CT (LiverTumorAnalysis extension, command line).",
        __package__, COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
