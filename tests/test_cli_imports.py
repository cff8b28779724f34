"""Structure rules the code keeps (read from the source with ``ast``, nothing imported): no command module
under dcnviz/cli/ imports another one (only the shared option modules), and every class-selection rule is
defined in exactly one place, outside the drawing code and the commands."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dcnviz"
SHARED = {"common", "analysis_common"}  # option parsing and checks every command may use
RULES = ("BACKGROUND_NAMES", "background_ids", "DEFAULT_CONF", "filter_detections", "select_detections",
         "parse_classes")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (``from a.b import c`` gives a.b and a.b.c)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def defined_names(path: Path) -> set[str]:
    """Top-level functions, classes and assigned names of a module."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("path", sorted(p for p in (PACKAGE / "cli").glob("*.py") if p.name != "__init__.py"),
                         ids=lambda p: p.name)
def test_no_command_module_imports_another(path):
    commands = {p.stem for p in (PACKAGE / "cli").glob("*.py")} - SHARED - {"__init__", path.stem}
    wrong = sorted(m for m in imported_modules(path) if m.startswith("dcnviz.cli.") and m.split(".")[2] in commands)
    assert not wrong, f"{path.name} imports command module(s) {wrong}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from dcnviz.cli.predict import DEFAULT_CONF\n    import dcnviz.cli.rois\n")
    assert {"dcnviz.cli.predict", "dcnviz.cli.rois"} <= imported_modules(module)


def test_class_selection_rules_live_in_one_library_place():
    places = {name: [] for name in RULES}
    for path in PACKAGE.rglob("*.py"):
        for name in defined_names(path) & set(RULES):
            places[name].append(path.relative_to(PACKAGE).as_posix())
    for name, where in places.items():
        assert len(where) == 1, f"{name} is defined in {where}"
        assert not where[0].startswith("viz/"), f"{name} is a rule, not drawing: {where[0]}"
    # option parsing is the only rule a command module may hold, in the shared options module
    assert places["parse_classes"] == ["cli/common.py"]
