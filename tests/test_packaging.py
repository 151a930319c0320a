"""pyproject declares what the package imports, and imports what it declares (issue: packaging)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib

from tests.conftest import ROOT

PACKAGES = ("trainer", "modules", "datamodules")
# import name -> distribution name, where they differ
DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "PyYAML"}
# Declared without an import: read from disk (its NanumGothic font file, modules/plots.py).
DATA_ONLY = {"koreanize-matplotlib"}


def _imported_distributions() -> set[str]:
    local = set(PACKAGES) | {"tests", "scripts"}
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [])
                for name in names:
                    top = name.split(".")[0]
                    if top not in local and top not in sys.stdlib_module_names and top != "__future__":
                        found.add(DISTRIBUTION.get(top, top))
    return found


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] for d in project["dependencies"]}


def _norm(names: set[str]) -> set[str]:
    return {n.lower().replace("_", "-") for n in names}


def test_every_imported_package_is_declared():
    missing = _norm(_imported_distributions()) - _norm(_declared())
    assert not missing, f"imported by the package but not in pyproject's dependencies: {sorted(missing)}"


def test_every_declared_package_is_imported():
    unused = _norm(_declared()) - _norm(_imported_distributions()) - _norm(DATA_ONLY)
    assert not unused, f"declared in pyproject but never imported by {PACKAGES}: {sorted(unused)}"


def test_torch_floor_has_the_fsdp2_api():
    # modules/base.py imports fully_shard from torch.distributed.fsdp: public since torch 2.6.
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    torch = next(d for d in deps if re.match(r"torch\b", d))
    assert re.search(r">=\s*2\.(6|[7-9]|\d\d)", torch), torch
    assert "from torch.distributed.fsdp import" in (ROOT / "modules" / "base.py").read_text(encoding="utf-8")
