"""Dependencies run one way: tools -> recipes -> vq2d, nlq -> episodic (docs/architecture.md#packages).

Every import statement of every module is read with ``ast`` (top-level and inside functions alike),
so a lazy import inside a function counts as much as one at the top of the file.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> the top-level packages of this project it must never import
FORBIDDEN = {
    "episodic": {"vq2d", "nlq", "recipes", "tools"},
    "vq2d": {"nlq", "recipes", "tools"},
    "nlq": {"vq2d", "recipes", "tools"},
    "recipes": {"tools"},
}


def imported_packages(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str, root: Path = REPO) -> list[str]:
    """``path:line imports pkg`` for every import of ``package`` that goes the wrong way."""
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        for line, top in imported_packages(path.read_text(encoding="utf-8"), str(path)):
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(root)}:{line} imports {top}")
    return bad


def test_import_parser_sees_every_form():
    source = ("import vq2d.models\nfrom nlq.data import x\nfrom . import sibling\n"
              "def f():\n    import recipes.steps as s\n    from episodic.io import read_json\n")
    assert sorted(imported_packages(source, "<case>")) == [(1, "vq2d"), (2, "nlq"), (5, "recipes"), (6, "episodic")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package):
    assert (REPO / package / "__init__.py").exists(), f"{package}/ is not a package"
    assert violations(package) == []


def test_checker_catches_an_upward_import(tmp_path):
    (tmp_path / "episodic").mkdir()
    (tmp_path / "episodic" / "bad.py").write_text("def f():\n    from vq2d.data import annotations\n")
    assert violations("episodic", root=tmp_path) == ["episodic/bad.py:2 imports vq2d"]
