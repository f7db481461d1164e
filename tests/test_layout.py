"""The layout's rules, checked over the source tree: no private name is used outside the module that defines it,
and no Python module grows past about 400 lines."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("csae_engine", "kernels", "benchmarks", "tests")
ALLOWED_PRIVATE_MODULES = {"_core", "_version"}  # the C++ extension and the version file: private by file name only


def python_files():
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def private_uses(path: Path) -> list:
    """`from m import _x`, and `obj._x` where obj is not self/cls and _x is defined nowhere in this file."""
    tree = ast.parse(path.read_text())
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    defined |= {t.attr for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign))
                for target in (n.targets if isinstance(n, ast.Assign) else [n.target])
                for t in ast.walk(target) if isinstance(t, ast.Attribute)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found += [f"{path.name}:{node.lineno} from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__") and a.name not in ALLOWED_PRIVATE_MODULES]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")) and node.attr not in defined:
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_private_name_is_used_outside_its_module():
    uses = [use for path in python_files() for use in private_uses(path)]
    assert not uses, "private names used outside their module:\n" + "\n".join(uses)


@pytest.mark.parametrize("folder", ["csae_engine", "kernels"])
def test_package_modules_stay_small(folder):
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in (ROOT / folder).rglob("*.py")}
    assert max(sizes.values()) <= 420, f"split these modules: {[str(p) for p, n in sizes.items() if n > 420]}"


def test_the_checker_finds_a_private_use(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from csae_engine.engine import _secret\nimport x\nx._hidden()\nclass A:\n    def f(self):\n"
                   "        return self._mine\n")
    assert [u.split(" ", 1)[1] for u in private_uses(bad)] == ["from csae_engine.engine import _secret", "x._hidden"]
