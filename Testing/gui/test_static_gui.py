"""Static checks of the GUI layer, which cannot run without Slicer's Qt application.

They catch what would otherwise only fail when a radiologist opens the module: a module file that
does not compile, a widget the code uses that the .ui lacks, a .ui binding to a parameter that does not
exist (or to a widget that cannot represent its type), a CMake list that names a missing file or forgets
a library file, and an ExtensionsIndex entry the catalog would reject.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = ["LiverTumorSeg", "TNMStaging"]
# What Slicer does not get (docs/architecture.md): the command line, training, the DICOM node, the phantoms, the
# phantom scenarios and the headless test bootstrap.
NOT_INSTALLED = ("LiverTumorSegLib/cli/", "LiverTumorSegLib/training/", "LiverTumorSegLib/node/",
                 "LiverTumorSegLib/synthetic/", "LiverTumorSegLib/testing/headless_slicer.py",
                 "LiverTumorSegLib/testing/phantom_scenarios.py", "TNMStagingLib/cli/", "TNMStagingLib/training/")

# The parameterNodeWrapper GUI connectors of Slicer 5.10+ (Base/Python/slicer/parameterNodeWrapper/
# guiConnectors.py): widget class -> annotation types it can represent.
CONNECTOR_TYPES = {
    "QCheckBox": {"bool"},
    "QPushButton": {"bool"},
    "QSlider": {"int"},
    "QSpinBox": {"int"},
    "QDoubleSpinBox": {"float"},
    "ctkSliderWidget": {"float"},
    "QComboBox": {"str", "int", "float", "bool", "enum"},
    "QLineEdit": {"str"},
    "QTextEdit": {"str"},
    "ctkPathLineEdit": {"pathlib.Path", "Path"},
    "ctkDirectoryButton": {"pathlib.Path", "Path"},
    "qMRMLNodeComboBox": {"node"},
    "qMRMLSubjectHierarchyTreeView": {"node"},
}

# Slicer's slicer-extension-catalog-entry-schema-v1.0.1: the only keys an entry may have.
CATALOG_ALLOWED_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                        "build_subdirectory", "enabled", "tier"}
CATALOG_REQUIRED_KEYS = {"$schema", "category", "scm_url"}


def module_python_files(module: str) -> list[Path]:
    return sorted(p for p in (REPO / module).rglob("*.py") if "__pycache__" not in p.parts)


def ui_widgets(ui_path: Path) -> dict[str, ElementTree.Element]:
    tree = ElementTree.parse(ui_path)
    return {w.get("name"): w for w in tree.iter("widget")}


def parameter_fields(module_file: Path) -> dict[str, str]:
    """Fields of the @parameterNodeWrapper class: name -> annotation source text."""
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper")
            or (isinstance(d, ast.Attribute) and d.attr == "parameterNodeWrapper")
            for d in node.decorator_list
        ):
            return {
                stmt.target.id: ast.unparse(stmt.annotation)
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            }
    raise AssertionError(f"{module_file}: no @parameterNodeWrapper class")


def annotation_kind(annotation: str) -> str:
    """Reduce an annotation to the kind the connectors dispatch on."""
    match = re.fullmatch(r"Annotated\[(.+?),.*\]", annotation)
    base = match.group(1).strip() if match else annotation
    if "vtkMRML" in base:
        return "node"
    return base


def cmake_list(cmake_text: str, variable: str, module: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", cmake_text, re.S)
    assert match, f"{variable} not set"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [item.replace("${MODULE_NAME}", module) for item in items if item]


@pytest.mark.parametrize("module", MODULES)
def test_every_module_file_compiles(module, tmp_path):
    files = module_python_files(module)
    assert files
    for path in files:
        py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


@pytest.mark.parametrize("module", MODULES)
def test_ui_is_well_formed_with_a_mrml_top_widget(module):
    ui_path = REPO / module / "Resources" / "UI" / f"{module}.ui"
    root = ElementTree.parse(ui_path).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    mrml_widgets = [name for name, w in ui_widgets(ui_path).items() if w.get("class", "").startswith("qMRML")
                    and name != top.get("name")]
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert set(mrml_widgets) <= connected, f"MRML widgets without the scene connection: {set(mrml_widgets) - connected}"


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_widget_the_code_uses_exists(module):
    code = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    widgets = ui_widgets(REPO / module / "Resources" / "UI" / f"{module}.ui")
    assert used, "the widget uses no ui element"
    assert used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_binding_names_a_parameter_the_widget_can_represent(module):
    fields = parameter_fields(REPO / module / f"{module}.py")
    widgets = ui_widgets(REPO / module / "Resources" / "UI" / f"{module}.ui")
    bound = {}
    for name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = (widget.get("class"), prop.findtext("string"))
    assert bound
    for widget_name, (widget_class, parameter) in bound.items():
        assert parameter in fields, f"{widget_name} binds unknown parameter {parameter!r}; fields: {sorted(fields)}"
        kind = annotation_kind(fields[parameter])
        allowed = CONNECTOR_TYPES.get(widget_class, set())
        assert kind in allowed or (kind not in {"str", "int", "float", "bool", "node"} and "enum" in allowed), (
            f"{widget_name} ({widget_class}) cannot represent {parameter}: {fields[parameter]}")
        if widget_class == "QComboBox" and kind in {"str", "int", "float", "bool"}:
            assert "Choice(" in fields[parameter], f"{parameter}: a QComboBox needs a Choice annotation"


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_file_and_only_existing_files(module):
    cmake_text = (REPO / module / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = cmake_list(cmake_text, "MODULE_PYTHON_SCRIPTS", module)
    resources = cmake_list(cmake_text, "MODULE_PYTHON_RESOURCES", module)
    for listed in scripts + resources:
        assert (REPO / module / listed).is_file(), f"{module}/CMakeLists.txt lists missing {listed}"
    library = {p.relative_to(REPO / module).as_posix() for p in (REPO / module / f"{module}Lib").rglob("*.py")
               if "__pycache__" not in p.parts}
    runs_in_slicer = {path for path in library if not path.startswith(NOT_INSTALLED)}
    missing = sorted(runs_in_slicer - set(scripts))
    assert not missing, f"library files not listed in SCRIPTS: {missing}"
    assert not [path for path in scripts if path.startswith(NOT_INSTALLED)], "command line or training installed"
    shipped = {p.relative_to(REPO / module).as_posix() for p in (REPO / module / "Resources").rglob("*")
               if p.is_file()}
    assert shipped <= set(resources), f"resources not listed in RESOURCES: {sorted(shipped - set(resources))}"
    assert "WITH_GENERIC_TESTS" in cmake_text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", cmake_text)
    assert (REPO / module / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_extension_cmake_declares_metadata_and_modules():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.search(r"project\((\w+)\)", text).group(1)
    assert project == "LiverTumorAnalysis"
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({variable}\s+\"[^\"]+\"\)", text), f"{variable} not set"
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"PyTorch"\)', text)
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text
    subdirectories = re.findall(r"add_subdirectory\((\w+)\)", text)
    assert subdirectories == MODULES
    for module in subdirectories:
        assert (REPO / module / "CMakeLists.txt").is_file()


def test_extensions_index_entry_matches_the_catalog_schema():
    project = re.search(r"project\((\w+)\)", (REPO / "CMakeLists.txt").read_text()).group(1)
    entry_path = REPO / f"{project}.json"
    assert entry_path.is_file(), "the catalog entry must be named like project()"
    entry = json.loads(entry_path.read_text(encoding="utf-8"))
    assert set(entry) <= CATALOG_ALLOWED_KEYS, f"keys the schema forbids: {set(entry) - CATALOG_ALLOWED_KEYS}"
    assert CATALOG_REQUIRED_KEYS <= set(entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["tier"] in (1, 3, 5)


def test_gui_layer_imports_no_computation_libraries():
    """Module files stay thin: no torch, MONAI, SimpleITK or numpy work in the widget file."""
    for module in MODULES:
        tree = ast.parse((REPO / module / f"{module}.py").read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"torch", "monai", "SimpleITK", "numpy", "scipy"}, module


def test_core_library_never_imports_slicer_or_qt():
    """Compute-core files (everything but the scene bridge and scenarios) stay free of slicer/Qt."""
    bridge = re.compile(r"^(scene.*|scenarios|.*_scenarios|headless_slicer)\.py$")
    for module in MODULES:
        for path in (REPO / module / f"{module}Lib").glob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
            names |= {node.module.split(".")[0] for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
            assert "qt" not in names and "ctk" not in names, f"{path} imports Qt"
            if not bridge.match(path.name):
                assert "slicer" not in names, f"{path} is compute core but imports slicer"


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True, encoding="utf-8", cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", MODULES)
def test_every_choice_combo_box_shows_readable_labels(module):
    """A parameter bound to a QComboBox is an enum with a ``label()`` (the parameterNodeWrapper connector shows it),
    never a bare Choice of raw codes."""
    import enum
    import importlib

    fields = parameter_fields(REPO / module / f"{module}.py")
    tree = ast.parse((REPO / module / f"{module}.py").read_text(encoding="utf-8"))
    sources = {alias.asname or alias.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom)
               for alias in node.names}
    widgets = ui_widgets(REPO / module / "Resources" / "UI" / f"{module}.ui")
    for widget in widgets.values():
        parameter = next((p.findtext("string") for p in widget.findall("property")
                          if p.get("name") == "SlicerParameterName"), None)
        if widget.get("class") != "QComboBox" or parameter is None:
            continue
        annotation = fields[parameter]
        assert annotation in sources, f"{parameter}: {annotation} is not an enum imported by the module file"
        choices = getattr(importlib.import_module(sources[annotation]), annotation)
        assert issubclass(choices, enum.Enum), f"{parameter}: {annotation} is not an enum"
        for member in choices:
            assert member.label() and member.label() != member.value, f"{annotation}.{member.name} has no label"


def test_custom_widgets_are_declared_and_place_widget_has_the_scene():
    for module in MODULES:
        ui_path = REPO / module / "Resources" / "UI" / f"{module}.ui"
        root = ElementTree.parse(ui_path).getroot()
        declared = {c.findtext("class") for c in root.iter("customwidget")}
        used = {w.get("class") for w in root.iter("widget")} - {"QLabel", "QPushButton", "QComboBox", "QCheckBox",
                                                               "QDoubleSpinBox", "QProgressBar", "QPlainTextEdit",
                                                               "QWidget", "QTableWidget"}
        assert used <= declared, f"{module}: widgets without a customwidget entry: {used - declared}"
        connected = {c.findtext("receiver") for c in root.iter("connection")}
        for name, widget in ui_widgets(ui_path).items():
            if widget.get("class") == "qSlicerMarkupsPlaceWidget":
                assert name in connected, f"{name} needs the scene to place markups"


def test_license_file_is_apache_2_and_matches_the_declared_licence():
    """The ExtensionsIndex checks for a LICENSE file at the repository root; pyproject.toml declares the same."""
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def test_the_minimum_slicer_version_is_stated_wherever_slicer_is_required():
    """slicer.packaging.pip_ensure and the bundled pydicom 3 need Slicer 5.12: the README, the extension's and the
    modules' CMake files, both module help texts and the library agree."""
    sys.path.insert(0, str(REPO / "LiverTumorSeg"))
    from LiverTumorSegLib.resources import MINIMUM_SLICER_VERSION

    stated = "Slicer 5.12 or later"
    assert MINIMUM_SLICER_VERSION == (5, 12)
    for path in ("README.md", "CMakeLists.txt", "LiverTumorSeg/CMakeLists.txt", "TNMStaging/CMakeLists.txt",
                 "LiverTumorSeg/LiverTumorSeg.py", "TNMStaging/TNMStaging.py", "docs/architecture.md"):
        assert stated in (REPO / path).read_text(encoding="utf-8").replace("\n", " ").replace("  ", " "), path


def _widget_methods(module: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse((REPO / module / f"{module}.py").read_text(encoding="utf-8"))
    widget = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == f"{module}Widget")
    return {node.name: node for node in widget.body if isinstance(node, ast.FunctionDef)}


def _shows_errors(function: ast.FunctionDef) -> bool:
    return "tryWithErrorDisplay" in ast.unparse(function)


@pytest.mark.parametrize("module", MODULES)
def test_one_error_dialog_per_user_action(module):
    """A handler wrapped in tryWithErrorDisplay never calls another wrapped handler (one error, one dialog), and the
    live-update callbacks (timers after edits) show errors in the panel, never in a dialog."""
    methods = _widget_methods(module)
    for name, function in methods.items():
        if not _shows_errors(function):
            continue
        called = {node.func.attr for node in ast.walk(function) if isinstance(node, ast.Call)
                  and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                  and node.func.value.id == "self"}
        nested = sorted(other for other in called & set(methods) if _shows_errors(methods[other]))
        assert not nested, f"{module}.{name} calls {nested}, which show their own error dialogs"
    for name in ("_updateMeasurements", "_updateFlr", "_refreshResult"):
        if name in methods:
            assert not _shows_errors(methods[name]) and "errorDisplay" not in ast.unparse(methods[name]), name


@pytest.mark.parametrize("module", MODULES)
def test_run_callbacks_work_while_the_module_is_hidden(module):
    """A background run can end while the user is in another module: what it calls when it finishes goes through
    the logic's parameter node, and exit() keeps the widget's parameter node (as the module template does)."""
    methods = _widget_methods(module)
    finished = [name for name in methods if name.endswith("Finished")]
    assert finished
    for name in finished:
        assert "self._parameterNode" not in ast.unparse(methods[name]), f"{name} uses the widget's parameter node"
    assert "setParameterNode(None)" not in ast.unparse(methods["exit"])
