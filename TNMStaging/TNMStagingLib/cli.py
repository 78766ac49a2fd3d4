"""``tnmstaging`` command line.

Each feature module that offers a sub-command defines ``register_cli(subparsers)``, which adds its parser
and sets ``func`` (called with the parsed arguments, returns the exit code). Feature modules keep heavy
imports (torch, XGBoost, Segment Anything) inside the functions that need them, so that ``tnmstaging --help``
and ``tnmstaging rules`` stay fast and a missing optional dependency only affects the sub-commands using it.
"""

from __future__ import annotations

import argparse
import sys

from LiverTumorSegLib.cli import build_registry_parser, run_parsed

# Feature modules (relative to this package) that register sub-commands, in help order.
COMMAND_MODULES = [
    "ajcc",
    "training_cli",
]


def build_parser() -> argparse.ArgumentParser:
    return build_registry_parser(
        "tnmstaging", "TNM staging of liver tumours: AJCC 8th-edition rules from measured lesions and the reader's "
        "findings, and the learned stage from image features (LiverTumorAnalysis extension, command line).",
        "TNMStagingLib", COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
