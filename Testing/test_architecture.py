"""The layer rules of docs/architecture.md, checked by reading every import of the libraries and module files.

Imports at module level and inside functions count (a lazy import still runs in that process); imports under
``if TYPE_CHECKING:`` do not. The installed set is what each module's CMakeLists.txt lists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = {"LiverTumorSegLib": REPO / "LiverTumorSeg" / "LiverTumorSegLib",
             "TNMStagingLib": REPO / "TNMStaging" / "TNMStagingLib"}
MODULE_FILES = {"LiverTumorSeg": REPO / "LiverTumorSeg" / "LiverTumorSeg.py",
                "TNMStaging": REPO / "TNMStaging" / "TNMStaging.py"}

# docs/architecture.md, "What may import what": package -> packages it may import (besides itself).
MAY_IMPORT = {
    "__init__": set(),
    "resources": set(),
    "core": {"resources"},
    "io": {"core", "resources"},
    "models": {"core", "io", "resources"},
    "worker": {"core", "io", "models", "resources"},
    "scene": {"core", "io", "models", "worker", "resources"},
    "gui": {"core", "io", "models", "worker", "scene", "resources"},
    "synthetic": {"core", "io", "resources"},
    "training": {"core", "io", "models", "worker", "synthetic", "resources"},
    "node": {"core", "io", "models", "worker", "resources"},
    "testing": {"core", "io", "models", "worker", "scene", "synthetic", "resources"},
    "cli": {"core", "io", "models", "worker", "scene", "synthetic", "training", "testing", "node", "resources"},
}
# TNMStagingLib's packages: (its own packages, LiverTumorSegLib packages) they may import.
TNM_MAY_IMPORT = {
    "__init__": (set(), set()),
    "resources": (set(), set()),
    "core": ({"resources"}, {"core", "io", "models", "resources"}),
    "worker": ({"core", "resources"}, {"core", "io", "models", "worker", "resources"}),
    "scene": ({"core", "worker", "resources"}, {"core", "io", "models", "worker", "scene", "resources"}),
    "training": ({"core", "resources"}, {"core", "io", "models", "synthetic", "resources"}),
    "testing": ({"core", "worker", "scene", "resources"},
                {"core", "io", "models", "worker", "scene", "synthetic", "testing", "resources"}),
    "cli": ({"core", "worker", "scene", "training", "resources"}, set(MAY_IMPORT["cli"]) | {"cli"}),
}
SLICER_PACKAGES = {"slicer", "vtk", "qt", "ctk", "qSlicerSegmentationsModuleWidgetsPythonQt"}
QT_PACKAGES = {"qt", "ctk"}
MAY_USE_SLICER = {"scene", "gui", "testing"}
MAY_USE_QT = {"gui"}
NO_TORCH = {"scene", "gui"}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def uses_slicer_app(path: Path) -> bool:
    """Whether the code (not a docstring) reads ``slicer.app``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.Attribute) and node.attr == "app" and isinstance(node.value, ast.Name)
               and node.value.id == "slicer" for node in ast.walk(tree))


def library_files() -> list[tuple[str, str, Path]]:
    """(library, package, file) for every Python file of both libraries; package is the first folder."""
    files = []
    for library, root in LIBRARIES.items():
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            relative = path.relative_to(root)
            package = relative.parts[0] if len(relative.parts) > 1 else relative.stem
            files.append((library, package, path))
    return files


FILES = library_files()


def _id(item) -> str:
    return str(item[2].relative_to(REPO))


def test_every_file_belongs_to_a_known_package():
    unknown = {(library, package) for library, package, _ in FILES
               if package not in (TNM_MAY_IMPORT if library == "TNMStagingLib" else MAY_IMPORT)}
    assert not unknown, f"packages without a rule in docs/architecture.md: {unknown}"


@pytest.mark.parametrize("item", FILES, ids=_id)
def test_imports_follow_the_layers(item):
    library, package, path = item
    if library == "TNMStagingLib":
        own, other = TNM_MAY_IMPORT[package]
        allowed_by_library = {"TNMStagingLib": own | {package}, "LiverTumorSegLib": other}
    else:
        allowed_by_library = {"LiverTumorSegLib": MAY_IMPORT[package] | {package}, "TNMStagingLib": set()}
    problems = []
    for line, module in imports_of(path):
        parts = module.split(".")
        if module.startswith("."):
            problems.append(f"line {line}: relative import {module} (the libraries import absolutely)")
        elif parts[0] in ("LiverTumorSeg", "TNMStaging"):
            problems.append(f"line {line}: imports the module file {parts[0]}")
        elif parts[0] in LIBRARIES and len(parts) > 1:
            if library == "LiverTumorSegLib" and parts[0] == "TNMStagingLib":
                problems.append(f"line {line}: LiverTumorSegLib imports {module}")
            elif parts[1] not in allowed_by_library[parts[0]]:
                problems.append(f"line {line}: {package} may not import {parts[0]}.{parts[1]} ({module})")
        elif parts[0] in SLICER_PACKAGES and package not in MAY_USE_SLICER:
            problems.append(f"line {line}: {package} may not import {module} (no slicer/vtk/Qt below the scene)")
        elif parts[0] in QT_PACKAGES and package not in MAY_USE_QT:
            problems.append(f"line {line}: {package} may not import {module} (Qt only in gui)")
        elif parts[0] in ("torch", "monai") and package in NO_TORCH:
            problems.append(f"line {line}: {package} may not import {module} (runs in the Slicer process)")
    if package not in MAY_USE_QT and uses_slicer_app(path):
        problems.append("uses slicer.app (only the GUI may)")
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("module", MODULE_FILES)
def test_module_files_import_no_torch_and_no_library_internals_of_the_other_module(module):
    path = MODULE_FILES[module]
    modules = [name for _, name in imports_of(path)]
    assert not [m for m in modules if m.split(".")[0] in ("torch", "monai")]
    assert not [m for m in modules if m.split(".")[0] in ("LiverTumorSeg", "TNMStaging") and m != module]


def _package_graph() -> dict[tuple[str, str], set[tuple[str, str]]]:
    graph: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for library, package, path in FILES:
        edges = graph.setdefault((library, package), set())
        for _, module in imports_of(path):
            parts = module.split(".")
            if parts[0] in LIBRARIES and len(parts) > 1 and parts[1] in MAY_IMPORT:
                if (parts[0], parts[1]) != (library, package):
                    edges.add((parts[0], parts[1]))
    return graph


def test_no_import_cycle_between_packages():
    graph = _package_graph()
    visiting, done = set(), set()

    def visit(node, trail):
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join(".".join(n) for n in [*trail, node])
        visiting.add(node)
        for target in sorted(graph.get(node, ())):
            visit(target, [*trail, node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def installed_modules() -> dict[str, Path]:
    """Dotted module name -> file, of the library files each module's CMakeLists.txt installs."""
    installed = {}
    for module in MODULE_FILES:
        text = (REPO / module / "CMakeLists.txt").read_text(encoding="utf-8")
        scripts = re.search(r"set\(\s*MODULE_PYTHON_SCRIPTS\s+(.*?)\)", text, re.S).group(1)
        for item in scripts.split():
            item = item.replace("${MODULE_NAME}", module)
            if item.endswith(".py") and "/" in item:
                dotted = item[:-3].replace("/", ".").removesuffix(".__init__")
                installed[dotted] = REPO / module / item
    return installed


def module_file(dotted: str) -> Path | None:
    """The source file of a library module (``a.b.c`` -> ``.../a/b/c.py`` or its package ``__init__.py``)."""
    parts = dotted.split(".")
    root = LIBRARIES[parts[0]]
    candidate = root.joinpath(*parts[1:])
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if path.is_file():
            return path
    return None


def test_installed_files_import_only_installed_library_modules():
    installed = installed_modules()
    problems = []
    for name, path in installed.items():
        for line, module in imports_of(path):
            if module.split(".")[0] in LIBRARIES and module_file(module) and module not in installed:
                problems.append(f"{name} line {line}: imports {module}, which Slicer does not get")
    assert not problems, "\n".join(problems)


def test_cli_training_node_phantoms_and_the_headless_bootstrap_are_not_installed():
    installed = installed_modules()
    for name in installed:
        parts = name.split(".")
        assert not (len(parts) > 1 and parts[1] in ("cli", "training", "node", "synthetic")), name
    assert "LiverTumorSegLib.testing.headless_slicer" not in installed
    assert "LiverTumorSegLib.testing.phantom_scenarios" not in installed
