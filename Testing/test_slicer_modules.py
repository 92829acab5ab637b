"""Static checks of the Slicer extension: module files, .ui files, CMake lists, and the backend's Slicer-free imports.

Slicer is not installed here, so nothing imports ``slicer``: the module files are parsed (ast), the .ui files read as
XML, and the CMake glob commands are run by the real ``cmake -P``. The modules' own ``Test`` classes run inside
Slicer (``slicer_add_python_unittest``) and check behaviour there.
"""
from __future__ import annotations

import ast
import importlib
import py_compile
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "CardiacAI" / "cardiac_ai"
MODULES = ("CardiacAI", "CardiacAITraining")

#: Packages a module file must not import while Slicer starts (before its dependencies are installed).
HEAVY_IMPORTS = {"cardiac_ai", "torch", "monai", "scipy", "skimage", "slicerio", "highdicom", "cv2", "safetensors",
                 "nrrd", "PyTorchUtils"}
#: What the backend must never import: it runs in plain Python and under PythonSlicer alike.
SLICER_ONLY = {"slicer", "vtk", "vtkmodules", "qt", "ctk", "PythonQt", "sitkUtils", "PyTorchUtils", "__main__"}


def _module_file(name: str) -> Path:
    return ROOT / name / f"{name}.py"


def _ui_file(name: str) -> Path:
    return ROOT / name / "Resources" / "UI" / f"{name}.ui"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _ui_widgets(name: str) -> dict[str, ET.Element]:
    root = ET.parse(_ui_file(name)).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _import_roots(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def _import_time_nodes(tree: ast.Module):
    """Every node that runs when the module is imported: all but function bodies (class bodies do run)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(node.decorator_list if not isinstance(node, ast.Lambda) else [])
            continue
        stack.extend(ast.iter_child_nodes(node))


# -- module files -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODULES)
def test_module_file_compiles(name, tmp_path):
    py_compile.compile(str(_module_file(name)), cfile=str(tmp_path / f"{name}.pyc"), doraise=True)


#: Every Python file of the extension: the Slicer modules, their scripts and the whole backend, which Slicer imports
#: piecemeal in its own process (cam_call pulls in cardiac_ai.weak, the headless batch cardiac_ai.pipeline).
ALL_PYTHON_FILES = sorted([*(_module_file(n) for n in MODULES), *(ROOT / "CardiacAI" / "Scripts").glob("*.py"),
                           *BACKEND.rglob("*.py")])


@pytest.mark.parametrize("path", ALL_PYTHON_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_parses_as_oldest_supported_python(path):
    # pyproject.toml allows Python 3.10: nothing newer (no PEP 695 type statements, no new f-string grammar).
    # ast's feature_version is best effort: on Python 3.12 and later it no longer sees the new f-string grammar, so
    # this check is only complete on 3.10 / 3.11 (CI runs 3.11).
    ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 10))


@pytest.mark.parametrize("name", MODULES)
def test_module_file_defines_the_template_classes(name):
    classes = {node.name: node for node in _tree(_module_file(name)).body if isinstance(node, ast.ClassDef)}
    bases = {cls: {getattr(b, "id", None) for b in node.bases} for cls, node in classes.items()}
    assert "ScriptedLoadableModule" in bases[name]
    assert "ScriptedLoadableModuleWidget" in bases[f"{name}Widget"]
    assert "ScriptedLoadableModuleLogic" in bases[f"{name}Logic"]
    assert "ScriptedLoadableModuleTest" in bases[f"{name}Test"]
    decorators = {getattr(d, "id", None) for d in classes[f"{name}ParameterNode"].decorator_list}
    assert "parameterNodeWrapper" in decorators


@pytest.mark.parametrize("name", MODULES)
def test_module_file_imports_no_backend_or_heavy_package_at_import_time(name):
    offending = [
        (node.lineno, root)
        for node in _import_time_nodes(_tree(_module_file(name)))
        for root in _import_roots(node)
        if root in HEAVY_IMPORTS
    ]
    assert offending == [], f"{name}.py imports {offending} when Slicer loads it; import inside the functions instead"


def test_import_time_check_catches_a_top_level_backend_import():
    tree = ast.parse("import os\nclass A:\n    import cardiac_ai\ndef f():\n    import torch\n")
    roots = [root for node in _import_time_nodes(tree) for root in _import_roots(node)]
    assert "cardiac_ai" in roots and "torch" not in roots


# -- .ui files ----------------------------------------------------------------------------------------------------
def _ui_names_used(name: str) -> set[str]:
    used = set()
    for node in ast.walk(_tree(_module_file(name))):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            used.add(node.attr)
    return used


@pytest.mark.parametrize("name", MODULES)
def test_every_widget_the_python_code_uses_exists_in_the_ui_file(name):
    used = _ui_names_used(name)
    assert used, "expected the widget to use self.ui.<name>"
    missing = used - set(_ui_widgets(name))
    assert missing == set(), f"{name}.py uses self.ui.{sorted(missing)} which {name}.ui does not define"


@pytest.mark.parametrize("name", MODULES)
def test_ui_file_top_widget_and_node_selectors_get_the_scene(name):
    root = ET.parse(_ui_file(name)).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == name
    receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == name and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    selectors = {w_name for w_name, w in _ui_widgets(name).items() if w.get("class") == "qMRMLNodeComboBox"}
    unfed = selectors - receivers
    assert unfed == set(), f"node selectors without the scene (they would list no nodes): {unfed}"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used_classes = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used_classes if c.startswith(("ctk", "qMRML"))} <= custom


def _parameter_fields(name: str) -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class."""
    tree = _tree(_module_file(name))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{name}ParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def _widget_classes_for(annotation: str) -> set[str]:
    """Widget classes Slicer's parameterNodeWrapper GUI connectors accept for an annotation
    (Slicer/Slicer: Base/Python/slicer/parameterNodeWrapper/guiConnectors.py, canRepresent of each connector)."""
    if annotation.startswith("vtkMRML"):
        return {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"}
    if annotation.startswith("Union[") and all(
            part.strip().startswith("vtkMRML") for part in annotation[len("Union["):-1].split(",")):
        return {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"}  # isNodeOrUnionOfNodes
    if "pathlib.Path" in annotation:
        return {"ctkPathLineEdit", "ctkDirectoryButton"}
    if "Choice(" in annotation:
        return {"QComboBox"}
    base = annotation.removeprefix("Annotated[").split(",")[0].rstrip("]")
    bounded = "WithinRange(" in annotation
    return {
        "str": {"QLineEdit", "QTextEdit"},
        "bool": {"QCheckBox", "QPushButton"},
        "int": {"QSpinBox"} | ({"QSlider"} if bounded else set()),
        "float": {"QDoubleSpinBox"} | ({"ctkSliderWidget"} if bounded else set()),
    }[base]


@pytest.mark.parametrize("name", MODULES)
def test_ui_parameter_bindings_name_real_fields_with_a_matching_widget_type(name):
    fields = _parameter_fields(name)
    bound = {}
    for widget_name, widget in _ui_widgets(name).items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget_name] = (prop.findtext("string"), widget.get("class"))
    assert bound, "no widget is bound to the parameter node"
    for widget_name, (parameter, widget_class) in bound.items():
        assert parameter in fields, f"{widget_name} binds to {parameter!r}, not a field of {name}ParameterNode"
        assert widget_class in _widget_classes_for(fields[parameter]), (
            f"{widget_name} is a {widget_class}; no GUI connector joins it to {parameter}: {fields[parameter]}"
        )
    assert len({p for p, _ in bound.values()}) == len(bound), "two widgets bound to one parameter"


def test_cardiacai_task_tables_agree():
    values = {}
    for node in _tree(_module_file("CardiacAI")).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    tasks = values["TASKS"]
    assert set(values["TASK_TITLES"]) == set(tasks)
    assert set(values["TORCH_TASKS"]) == set(tasks) - {"import-labels"}
    # the panel's choices are the backend's (the module cannot import the backend when Slicer starts)
    from cardiac_ai import slicer_results

    assert values["FIBROSIS_MODELS"] == slicer_results.FIBROSIS_MODELS
    assert values["CAM_METHODS"] == ("default", *slicer_results.CAM_METHODS)
    assert set(values["MAP_KINDS"]) == set(slicer_results.MAP_KINDS)
    assert values["CAM_CLASSES"][:2] == ("predicted", "slice")  # the volume's predicted class; each slice's own
    assert values["CAM_AUGMENTATIONS"] == slicer_results.CAM_AUGMENTATIONS
    assert values["CAM_LV_WALL_MM"] == slicer_results.CAM_LV_WALL_MM
    assert "torch" in values["PROTECTED_PACKAGES"] and "SimpleITK" in values["PROTECTED_PACKAGES"]
    requirements = [r for _, r in values["BASE_REQUIREMENTS"] + values["TORCH_REQUIREMENTS"]]
    assert not [r for r in requirements if re.match(r"(torch|SimpleITK|requests)\b", r, re.I)]


# -- the Logic calls the backend only through its public API ----------------------------------------------------------
def _backend_uses(name: str) -> list[tuple[str, str]]:
    """(backend module, attribute) pairs reached through ``importBackend("<module>")`` in a module file."""
    uses = []
    for function in ast.walk(_tree(_module_file(name))):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        aliases = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and _backend_module(node.value):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        aliases[target.id] = _backend_module(node.value)
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute):
                module = _backend_module(node.value)
                if module is None and isinstance(node.value, ast.Name):
                    module = aliases.get(node.value.id)
                if module:
                    uses.append((module, node.attr))
    return uses


def _backend_module(node: ast.AST) -> str | None:
    if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "importBackend" and node.args
            and isinstance(node.args[0], ast.Constant)):
        return node.args[0].value
    return None


@pytest.mark.parametrize("name", MODULES)
def test_modules_use_only_public_backend_names(name):
    uses = _backend_uses(name)
    assert uses, f"{name}.py should reach the backend through importBackend"
    for module_name, attribute in uses:
        module = importlib.import_module(f"cardiac_ai.{module_name}")
        assert attribute in module.__all__, f"{name}.py uses cardiac_ai.{module_name}.{attribute}, not in __all__"


def _sample_option_value(subparser, name: str, value: ast.AST):
    """A value the parser accepts where the Logic passes a variable: a choice, a bare flag, or "0"."""
    if isinstance(value, ast.Constant) and not isinstance(value.value, str):
        return value.value
    action = subparser._option_string_actions.get("--" + name.replace("_", "-"))
    if action is not None and action.nargs == 0:
        return True
    if action is not None and action.choices:
        return next(iter(action.choices))
    return "0"


def test_commands_the_logic_runs_are_accepted_by_the_cli_parser():
    from cardiac_ai.cli import build_parser
    from cardiac_ai.subprocess_runner import build_command

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "demo" in a.choices).choices
    calls = []
    for node in ast.walk(_tree(_module_file("CardiacAI"))):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "runCommand" and len(node.args) >= 3
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[1], ast.List)
                and isinstance(node.args[2], ast.Dict)):
            subcommand = node.args[0].value
            assert subcommand in subparsers, f"the Logic runs `cardiacai {subcommand}`, which the CLI does not have"
            options = {key.value: _sample_option_value(subparsers[subcommand], key.value, value)
                       for key, value in zip(node.args[2].keys, node.args[2].values)}
            positional = ["input.nrrd"] * len(node.args[1].elts)
            calls.append(build_command(subcommand, positional, options, python_executable="python"))
    assert {call[3] for call in calls} >= {"convert", "demo", "segment-cine", "function", "info"}
    # the other capabilities' command lines are built by cardiac_ai.slicer_results (tested in test_slicer_results)
    for call in calls:
        parser.parse_args(call[3:])  # argparse exits (SystemExit) on an unknown option or a wrong number of inputs


def _logic_class(name: str) -> ast.ClassDef:
    return next(n for n in _tree(_module_file(name)).body if isinstance(n, ast.ClassDef) and n.name == f"{name}Logic")


@pytest.mark.parametrize("name", MODULES)
def test_logic_shows_no_dialogs_so_it_runs_headless(name):
    dialogs = {"errorDisplay", "warningDisplay", "infoDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay",
               "delayDisplay", "messageBox", "tryWithErrorDisplay"}
    calls = [(node.lineno, node.func.attr) for node in ast.walk(_logic_class(name))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in dialogs]
    assert calls == [], f"{name}Logic shows dialogs {calls}; return warnings and raise errors, the Widget shows them"


def test_logic_never_repoints_a_node_at_a_temporary_file():
    """saveNode would point the user's node at the run's temporary file (deleted after the run) and mark it saved;
    inputs go through writeVolumeCopy (a storage node of its own), and loaded results are detached from the file."""
    calls = {(node.lineno, node.func.attr) for node in ast.walk(_logic_class("CardiacAI"))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "saveNode"}
    assert calls == set(), f"CardiacAILogic calls saveNode at {sorted(calls)}; use writeVolumeCopy"
    load = next(n for n in ast.walk(_logic_class("CardiacAI"))
                if isinstance(n, ast.FunctionDef) and n.name == "loadResultVolume")
    assert "forgetTemporaryFile" in ast.unparse(load)


def test_self_tests_skip_rather_than_install_pytorch():
    test_class = next(n for n in _tree(_module_file("CardiacAI")).body
                      if isinstance(n, ast.ClassDef) and n.name == "CardiacAITest")
    direct = [n.lineno for method in test_class.body if isinstance(method, ast.FunctionDef)
              and method.name.startswith("test_") for n in ast.walk(method)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
              and n.func.attr == "setupPythonRequirements" and "requireTorch=True" in ast.unparse(n)]
    assert direct == [], f"self-tests set up PyTorch themselves at lines {direct}; use _torchOrSkip"


def test_cardiacai_widget_has_a_panel_section_for_every_task():
    tree = _tree(_module_file("CardiacAI"))
    sections = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(getattr(t, "attr", None) == "_sections" for t in node.targets))
    tasks = {key.value for key in sections.keys}
    values = {n.targets[0].id: n.value for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.targets[0], ast.Name)}
    assert tasks == set(ast.literal_eval(values["TASKS"]))


# -- CMake ----------------------------------------------------------------------------------------------------------
def _cmake_globs(cmake_lists: Path, source_dir: Path, project_dir: Path) -> dict[str, list[str]]:
    """Run the file(GLOB...) commands of a CMakeLists.txt with the real cmake and return each variable's list."""
    text = cmake_lists.read_text()
    commands = re.findall(r"^file\((GLOB(?:_RECURSE)?\s+(\w+)[^)]*)\)", text, flags=re.M)
    assert commands, f"no file(GLOB ...) in {cmake_lists}"
    script = [f'set(CMAKE_CURRENT_SOURCE_DIR "{source_dir.as_posix()}")',
              f'set(PROJECT_SOURCE_DIR "{project_dir.as_posix()}")']
    for line in re.findall(r"^set\((CARDIACAI\w*_DIR\s[^)]*)\)", text, flags=re.M):
        script.append(f"set({line})")
    for command, variable in commands:
        script.append("file(" + command.replace("CONFIGURE_DEPENDS", "") + ")")
        script.append(f'message("{variable}=${{{variable}}}")')
    with tempfile.TemporaryDirectory() as folder:
        script_path = Path(folder) / "globs.cmake"
        script_path.write_text("\n".join(script) + "\n")
        result = subprocess.run(["cmake", "-P", str(script_path)], text=True, capture_output=True, timeout=60,
                                check=False, cwd=source_dir)
    assert result.returncode == 0, result.stderr
    globs = {}
    for line in result.stderr.splitlines():
        variable, _, values = line.partition("=")
        globs[variable] = [v for v in values.split(";") if v]
    return globs


needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")


@needs_cmake
def test_cmake_glob_lists_every_backend_python_file_and_the_resources():
    globs = _cmake_globs(ROOT / "CardiacAI" / "CMakeLists.txt", ROOT / "CardiacAI", ROOT)
    expected = {p.relative_to(ROOT / "CardiacAI").as_posix() for p in BACKEND.rglob("*.py")
                if "__pycache__" not in p.parts}
    assert set(globs["CARDIACAI_BACKEND_SCRIPTS"]) == expected
    assert "cardiac_ai/subprocess_runner.py" in expected
    assert "Resources/UI/CardiacAI.ui" in globs["CARDIACAI_UI"]
    assert "Resources/Icons/CardiacAI.png" in globs["CARDIACAI_ICONS"]
    assert "README.md" in globs["CARDIACAI_MODEL_FILES"]


@needs_cmake
def test_cmake_glob_picks_up_a_new_nested_backend_file(tmp_path):
    (tmp_path / "cardiac_ai" / "new" / "deep").mkdir(parents=True)
    (tmp_path / "cardiac_ai" / "new" / "deep" / "future.py").write_text("")
    (tmp_path / "cardiac_ai" / "notes.txt").write_text("")
    (tmp_path / "Resources" / "Models").mkdir(parents=True)
    globs = _cmake_globs(ROOT / "CardiacAI" / "CMakeLists.txt", tmp_path, tmp_path)
    assert globs["CARDIACAI_BACKEND_SCRIPTS"] == ["cardiac_ai/new/deep/future.py"]


@pytest.mark.parametrize("name", MODULES)
def test_module_cmake_builds_the_scripted_module_with_its_self_test(name):
    text = (ROOT / name / "CMakeLists.txt").read_text()
    assert re.search(rf"set\(MODULE_NAME {name}\)", text)
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, flags=re.S).group(1)
    for keyword in ("NAME ${MODULE_NAME}", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}", "RESOURCES ${MODULE_PYTHON_RESOURCES}",
                    "WITH_GENERIC_TESTS"):
        assert keyword in call
    scripts = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", text, flags=re.S).group(1).split()
    assert "${MODULE_NAME}.py" in scripts
    if name == "CardiacAI":
        assert "${CARDIACAI_BACKEND_SCRIPTS}" in scripts
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, flags=re.S).group(1)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing


def test_top_level_cmake_declares_the_extension():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^cmake_minimum_required\(", text, flags=re.M)
    assert re.search(r"^project\(CardiacAI\)", text, flags=re.M)
    assert re.search(r'^set\(EXTENSION_DEPENDS "PyTorch"\)', text, flags=re.M)
    assert re.search(r'^set\(EXTENSION_CATEGORY "Cardiac"\)', text, flags=re.M)
    for key in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'^set\(EXTENSION_{key} "[^"]+"\)', text, flags=re.M), key
    order = [text.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                     "add_subdirectory(CardiacAI)", "add_subdirectory(CardiacAITraining)",
                                     "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                     "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)


def test_icons_are_128_pixel_pngs():
    from PIL import Image

    for path in (ROOT / "Resources" / "Icons" / "CardiacAI.png",
                 *(ROOT / n / "Resources" / "Icons" / f"{n}.png" for n in MODULES)):
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (128, 128)), path


# -- the backend stays free of Slicer -------------------------------------------------------------------------------
def _slicer_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(_tree(path)):
        roots = _import_roots(node)
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            roots = [str(node.args[0].value).split(".")[0]]
        found += [(node.lineno, root) for root in roots if root in SLICER_ONLY]
    return found


def test_backend_never_imports_slicer_vtk_qt_or_ctk():
    files = sorted(p for p in BACKEND.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) > 5
    offending = {str(p.relative_to(ROOT)): found for p in files if (found := _slicer_imports(p))}
    assert offending == {}


def test_slicer_import_scan_sees_imports_inside_functions_and_import_module(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import vtk\n    import importlib\n    importlib.import_module('slicer.util')\n")
    assert [root for _, root in _slicer_imports(sample)] == ["vtk", "slicer"]


def _logic_methods(name: str) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in _logic_class(name).body if isinstance(n, ast.FunctionDef)}


CAPABILITY_METHODS = {"segmentCine": None, "computeFunction": None, "analyseMap": "map_call",
                      "fitMapping": "fit_map_call", "computeEcv": "ecv_call", "quantifyFibrosis": "fibrosis_call",
                      "explainCam": "cam_call", "checkQuality": "qc_call"}


@pytest.mark.parametrize("method", sorted(CAPABILITY_METHODS))
def test_every_capability_has_a_logic_method_with_a_console_example(method):
    methods = _logic_methods("CardiacAI")
    assert method in methods, f"CardiacAILogic lacks {method}"
    doc = ast.get_docstring(methods[method])
    assert doc and "Example, in Slicer's Python console::" in doc and f"{method}(" in doc
    assert ":return:" in doc
    builder = CAPABILITY_METHODS[method]
    if builder:  # the command line comes from the tested pure builder, not from literals in the module
        assert ("slicer_results", builder) in _backend_uses("CardiacAI")
        called = {getattr(n.func, "attr", None) for n in ast.walk(methods[method]) if isinstance(n, ast.Call)}
        assert builder in called and "runBackendCall" in called


def test_process_dispatches_every_task_and_checks_its_inputs_first():
    process = _logic_methods("CardiacAI")["process"]
    source = ast.unparse(process)
    values = {n.targets[0].id: n.value for n in _tree(_module_file("CardiacAI")).body if isinstance(n, ast.Assign)
              and isinstance(n.targets[0], ast.Name)}
    for task in ast.literal_eval(values["TASKS"]):
        if task != "import-labels":  # the fall-through
            assert f"task == {task!r}" in source, task
    assert source.index("missingInputs") < source.index("setupPythonRequirements")
    missing = ast.unparse(_logic_methods("CardiacAI")["missingInputs"])
    for field in ("edVolume", "esVolume", "mappingSeries", "inputVolume", "postContrastVolume", "qcSegmentation"):
        assert f"parameterNode.{field}" in missing


def _descendants(widget: ET.Element) -> set[str]:
    return {w.get("name") for w in widget.iter("widget")} - {widget.get("name")}


def _bound_widgets(name: str) -> dict[str, str]:
    """Parameter -> name of the widget bound to it (SlicerParameterName)."""
    return {w.find("property[@name='SlicerParameterName']").findtext("string"): n for n, w in _ui_widgets(name).items()
            if w.find("property[@name='SlicerParameterName']") is not None}


def _parameter_defaults(name: str) -> dict:
    tree = _tree(_module_file(name))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{name}ParameterNode")
    return {n.target.id: ast.literal_eval(n.value) for n in cls.body if isinstance(n, ast.AnnAssign) and n.value}


#: The CAM pseudo-label settings of the panel: override box -> the value fields it passes on.
CAM_PSEUDO_LABEL_FIELDS = {
    "camCrfIterationsOverride": ("camCrfIterations",),
    "camCrfSmoothnessOverride": ("camCrfSmoothnessWeight", "camCrfSmoothnessWidth"),
    "camCrfAppearanceOverride": ("camCrfAppearanceWeight", "camCrfAppearanceWidth", "camCrfAppearanceGrey"),
    "camOtsuClassesOverride": ("camOtsuClasses",),
    "camScaleRangeOverride": ("camScaleRangeLow", "camScaleRangeHigh"),
    "camMinFractionOverride": ("camMinFraction",),
}


def test_cam_advanced_settings_sit_collapsed_in_the_cam_section():
    widgets = _ui_widgets("CardiacAI")
    bound = _bound_widgets("CardiacAI")
    advanced = widgets["camAdvancedCollapsibleButton"]
    assert advanced.get("class") == "ctkCollapsibleButton"
    assert advanced.find("property[@name='collapsed']").findtext("bool") == "true"
    assert "camAdvancedCollapsibleButton" in _descendants(widgets["camCollapsibleButton"])
    inside = _descendants(advanced)
    for box in ("camAugment", "camStructures"):
        assert bound[box] in inside and widgets[bound[box]].get("class") == "QCheckBox", box
    settings = _descendants(widgets["camPseudoLabelSettingsGroupBox"])
    assert "camPseudoLabelSettingsGroupBox" in inside
    for override, fields in CAM_PSEUDO_LABEL_FIELDS.items():
        assert bound[override] in settings and widgets[bound[override]].get("class") == "QCheckBox", override
        for field in fields:
            assert bound[field] in settings and widgets[bound[field]].get("class").endswith("SpinBox"), field
    # the main CAM settings stay outside the Advanced group
    assert not {bound["camExplain"], bound["camMethod"], bound["camPseudoLabel"]} & inside
    cam_fields = {f for f in _parameter_fields("CardiacAI") if f.startswith("cam")}
    assert cam_fields == {"camExplain", "camMethod", "camPseudoLabel", "camAugment", "camStructures", "camLvWallMm",
                          "camEndDiastoleVolume",
                          *CAM_PSEUDO_LABEL_FIELDS,
                          *(f for fields in CAM_PSEUDO_LABEL_FIELDS.values() for f in fields)}
    defaults = _parameter_defaults("CardiacAI")
    assert not any(defaults[override] for override in CAM_PSEUDO_LABEL_FIELDS) and not defaults["camAugment"]
    assert not defaults["camStructures"]  # the rough estimate only when asked for
    from cardiac_ai.slicer_results import CAM_LV_WALL_MM

    wall = widgets[bound["camLvWallMm"]]  # the LV wall band: a spin box in the Advanced group, 0 allowed (none)
    assert bound["camLvWallMm"] in inside and wall.get("class") == "QDoubleSpinBox"
    assert float(wall.find("property[@name='value']").findtext("double")) == defaults["camLvWallMm"] == CAM_LV_WALL_MM
    assert float(wall.find("property[@name='minimum']").findtext("double")) == 0.0
    # the optional end-diastolic frame: a volume selector in the main CAM settings, "none" allowed
    diastole = widgets[bound["camEndDiastoleVolume"]]
    assert diastole.get("class") == "qMRMLNodeComboBox" and bound["camEndDiastoleVolume"] not in inside
    assert bound["camEndDiastoleVolume"] in _descendants(widgets["camCollapsibleButton"])
    assert diastole.find("property[@name='noneEnabled']").findtext("bool") == "true"


def test_cam_settings_spin_boxes_are_enabled_by_their_boxes():
    widget = next(n for n in _tree(_module_file("CardiacAI")).body
                  if isinstance(n, ast.ClassDef) and n.name == "CardiacAIWidget")
    modified = next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == "_onParameterNodeModified")
    assert ("self.ui.camPseudoLabelSettingsGroupBox.enabled = self._parameterNode.camPseudoLabel"
            in ast.unparse(modified))
    loop = next(n for n in ast.walk(modified) if isinstance(n, ast.For) and isinstance(n.iter, ast.Tuple)
                and "camCrfIterationsOverride" in ast.unparse(n.iter))
    assert "spinBox.enabled = getattr(self._parameterNode, override)" in ast.unparse(loop)
    enabled_by = {pair.elts[0].value: [e.attr for e in pair.elts[1].elts] for pair in loop.iter.elts}
    widget_of = _bound_widgets("CardiacAI")
    assert enabled_by == {override: [widget_of[f] for f in fields]
                          for override, fields in CAM_PSEUDO_LABEL_FIELDS.items()}


def _cam_settings_function():
    """CardiacAILogic.camPseudoLabelSettings, compiled alone (it reads only the parameter node's attributes)."""
    method = _logic_methods("CardiacAI")["camPseudoLabelSettings"]
    method.decorator_list = []  # a plain function (it is a staticmethod of the Logic)
    namespace = {"CardiacAIParameterNode": object}
    exec(compile(ast.Module(body=[method], type_ignores=[]), str(_module_file("CardiacAI")), "exec"), namespace)
    return namespace["camPseudoLabelSettings"]


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def test_cam_panel_settings_reach_the_command_line_only_when_chosen():
    import inspect
    from types import SimpleNamespace

    from cardiac_ai.cli import _pseudo_label_overrides, build_parser
    from cardiac_ai.slicer_results import cam_call
    from cardiac_ai.subprocess_runner import build_command

    methods = _logic_methods("CardiacAI")
    explain_arguments = {a.arg for a in methods["explainCam"].args.args}
    settings = _cam_settings_function()
    defaults = _parameter_defaults("CardiacAI")

    def parsed(**changes):
        node = SimpleNamespace(**{**defaults, **changes})
        keywords = settings(node)
        assert set(keywords) <= explain_arguments
        call = cam_call("cine.nrrd", "out", pseudo_label=node.camPseudoLabel,
                        **{_snake(k): v for k, v in keywords.items()})
        args = build_parser().parse_args(build_command(call.command, call.positional, call.options,
                                                       python_executable="python")[3:])
        return args, _pseudo_label_overrides(args)

    # by default nothing is passed: the model card's settings
    assert parsed()[1] == {} and parsed(camPseudoLabel=True)[1] == {}
    every = {override: True for override in CAM_PSEUDO_LABEL_FIELDS}
    assert parsed(**every)[1] == {}  # ticked boxes do nothing without the pseudo-label (the U-Net makes the labels)
    args, overrides = parsed(camPseudoLabel=True, **every)
    assert overrides == {"crf_iterations": 5, "crf_w2": 1.0, "crf_theta_gamma": 3.0, "crf_w1": 0.0,
                         "crf_theta_alpha": 80.0, "crf_theta_beta": 13.0, "otsu_classes": 3, "scale_range": (0.5, 1.0),
                         "min_fraction": 0.0}  # the panel's starting values are the paper's, all accepted
    args, overrides = parsed(camPseudoLabel=True, camOtsuClassesOverride=True, camOtsuClasses=0,
                             camMinFractionOverride=True, camMinFraction=0.3)
    assert overrides == {"otsu_classes": None, "min_fraction": 0.3} and args.crf_iterations is None
    # every cam_call keyword is reachable from explainCam, and explainCam passes each one on
    call = next(n for n in ast.walk(methods["explainCam"])
                if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "cam_call")
    passed = {k.arg: ast.unparse(k.value) for k in call.keywords}
    keyword_only = [p for p in inspect.signature(cam_call).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert set(passed) == {p.name for p in keyword_only}
    # the end-diastolic frame goes as a file, written from its node like the input volume
    assert passed.pop("end_diastole_path") == "endDiastolePath" and "endDiastoleVolumeNode" in explain_arguments
    assert "self.volumeToFile(endDiastoleVolumeNode" in ast.unparse(methods["explainCam"])
    assert all(value in explain_arguments and _snake(value) == name for name, value in passed.items()), passed
    # process passes the panel's settings to explainCam
    process = ast.unparse(methods["process"])
    assert "augment=CAM_AUGMENTATIONS if parameterNode.camAugment else None" in process
    assert "**self.camPseudoLabelSettings(parameterNode)" in process
    assert "structures=parameterNode.camStructures" in process
    # the wall only touches the weak U-Net's heart: none is asked for with the pseudo-label (no warning every run)
    assert "lvWallMm=None if parameterNode.camPseudoLabel else parameterNode.camLvWallMm" in process
    assert ("endDiastoleVolumeNode=None if parameterNode.camPseudoLabel else parameterNode.camEndDiastoleVolume"
            in process)


@pytest.mark.parametrize("name", MODULES)
def test_ui_form_layout_cells_are_each_used_once(name):
    root = ET.parse(_ui_file(name)).getroot()
    for layout in root.iter("layout"):
        if layout.get("class") != "QFormLayout":
            continue
        cells = [(item.get("row"), item.get("column")) for item in layout.findall("item")]
        assert len(cells) == len(set(cells)), f"{layout.get('name')} puts two widgets in one cell: {cells}"


def test_the_cam_panels_limits_are_the_backends():
    """The panel's ranges, the spin boxes' maxima and the headless batch's check repeat the backend's limits (Slicer
    code cannot import them at class definition): kept in step here."""
    from cardiac_ai.weak.pseudo_labels import MAX_OTSU_CLASSES
    from cardiac_ai.weak.structures import MAX_LV_WALL_MM

    fields = _parameter_fields("CardiacAI")
    assert fields["camLvWallMm"] == f"Annotated[float, WithinRange(0.0, {MAX_LV_WALL_MM})]"
    assert fields["camOtsuClasses"] == f"Annotated[int, WithinRange(0, {MAX_OTSU_CLASSES})]"
    widgets = _ui_widgets("CardiacAI")
    assert float(widgets["camLvWallMmSpinBox"].find("property[@name='maximum']").findtext("double")) == MAX_LV_WALL_MM
    assert int(widgets["camOtsuClassesSpinBox"].find("property[@name='maximum']").findtext("number")) == \
        MAX_OTSU_CLASSES
    script = (Path(__file__).resolve().parents[1] / "CardiacAI" / "Scripts" / "batch_headless.py").read_text()
    assert f"0.0 <= args.lv_wall_mm <= {MAX_LV_WALL_MM}" in script


#: Names the Slicer module files take from ``from slicer.ScriptedLoadableModule import *`` (pyflakes cannot see them).
SCRIPTED_MODULE_NAMES = {"ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                         "ScriptedLoadableModuleTest"}


@pytest.mark.parametrize("path", [*(_module_file(name) for name in MODULES),
                                  ROOT / "CardiacAI" / "Scripts" / "batch_headless.py"], ids=lambda p: p.name)
def test_slicer_code_uses_no_undefined_name(path):
    """Slicer cannot run here, so a name used but never defined (a variable left behind by a refactoring: the
    training panel's ``registerTo`` failed every Start) shows only inside Slicer; pyflakes finds it statically."""
    pyflakes_api = pytest.importorskip("pyflakes.api")
    from pyflakes.messages import ImportStarUsage, ImportStarUsed, UndefinedName
    from pyflakes.reporter import Reporter

    class Collect(Reporter):
        def __init__(self):
            self.found = []

        def flake(self, message):
            self.found.append(message)

        def syntaxError(self, *args):
            self.found.append(args)

        def unexpectedError(self, *args):
            self.found.append(args)

    collect = Collect()
    pyflakes_api.check(path.read_text(encoding="utf-8"), str(path), collect)
    problems = [m for m in collect.found if not (
        isinstance(m, ImportStarUsed)
        or (isinstance(m, (ImportStarUsage, UndefinedName)) and m.message_args[0] in SCRIPTED_MODULE_NAMES))]
    undefined = [str(m) for m in problems if isinstance(m, (ImportStarUsage, UndefinedName, tuple))]
    assert not undefined, "\n".join(undefined)


def test_phase_sensitive_box_reaches_fit_map_for_t1_only():
    bound = _bound_widgets("CardiacAI")
    assert bound["mapSigned"] == "mapSignedCheckBox"
    assert _ui_widgets("CardiacAI")["mapSignedCheckBox"].get("class") == "QCheckBox"
    assert "mapSignedCheckBox" in _descendants(_ui_widgets("CardiacAI")["mappingCollapsibleButton"])
    assert _parameter_defaults("CardiacAI")["mapSigned"] is False  # magnitude frames, as the command line
    methods = _logic_methods("CardiacAI")
    call = next(n for n in ast.walk(methods["process"])
                if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "fitMapping")
    passed = {k.arg: ast.unparse(k.value) for k in call.keywords}
    # T2 fitting refuses signed frames: a box left ticked from a T1 fit must not fail the next T2 fit
    assert passed["signed"] == "parameterNode.mapSigned and parameterNode.mapKind == 'T1'"
    assert "signed" in {a.arg for a in methods["fitMapping"].args.args}
    widget = next(n for n in _tree(_module_file("CardiacAI")).body
                  if isinstance(n, ast.ClassDef) and n.name == "CardiacAIWidget")
    assert "self.ui.mapSignedCheckBox.enabled = self._parameterNode.mapKind == 'T1'" in ast.unparse(widget)
