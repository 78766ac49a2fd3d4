"""``tnmstaging`` command line: one module per sub-command, each over plain functions of the library.

Command modules define ``register(subparsers)`` (see ``LiverTumorSegLib.cli``) and keep heavy imports (torch,
XGBoost, Segment Anything) inside the functions that need them, so that ``tnmstaging --help`` and
``tnmstaging rules`` stay fast and a missing optional dependency only affects the sub-commands using it.
"""

from __future__ import annotations

import argparse

from LiverTumorSegLib.cli.common import build_registry_parser, run_parsed

# Command modules of this package, in help order.
COMMAND_MODULES = ["rules", "staging"]


def build_parser() -> argparse.ArgumentParser:
    return build_registry_parser(
        "tnmstaging", "TNM staging of liver tumours: AJCC 8th-edition rules from measured lesions and the reader's "
        "findings, and the learned stage from image features (LiverTumorAnalysis extension, command line).",
        __name__, COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), argv)
