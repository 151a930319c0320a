"""The floors run one way: ``trainer/`` stands on ``modules/`` and ``datamodules/``, which never reach up nor
sideways; no task module is more than two classes deep under ``LightningModule``; no file grows past ~450
lines."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Blocks `trainer` (a None entry in sys.modules makes every `import trainer...` raise ImportError), then imports
# every file of the package, lazy imports inside functions included: they are listed from the source.
PROBE = r"""
import ast, importlib, json, pathlib, sys
package, blocked = sys.argv[1], sys.argv[2:]
for name in blocked:
    sys.modules[name] = None
found = {}
for path in sorted(pathlib.Path(package).glob("*.py")):
    name = f"{package}.{path.stem}" if path.stem != "__init__" else package
    importlib.import_module(name)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for target in names:
            if any(target == b or target.startswith(b + ".") for b in blocked):
                found.setdefault(name, []).append(target)
print("RESULT " + json.dumps(found))
"""


@pytest.mark.parametrize("package, blocked", [("modules", ["trainer", "datamodules"]),
                                              ("datamodules", ["trainer", "modules"])])
def test_lower_floors_never_import_trainer_or_each_other(package, blocked):
    proc = subprocess.run([sys.executable, "-c", PROBE, package, *blocked], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.split("RESULT ", 1)[1]) == {}


def test_no_task_module_is_more_than_two_classes_deep_under_lightning_module():
    import importlib
    import inspect

    import lightning.pytorch as pl

    depths = {}
    for path in sorted((ROOT / "modules").glob("*.py")):
        module = importlib.import_module(f"modules.{path.stem}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, pl.LightningModule) and cls is not pl.LightningModule and cls.__module__ == module.__name__:
                depths[cls.__name__] = sum(1 for c in cls.__mro__ if issubclass(c, pl.LightningModule)) - 1
    assert {"TuneloopModule", "EncoderModule", "CausalLMModule", "VisionLanguageModule"} <= set(depths)
    assert max(depths.values()) <= 2, depths


def test_no_file_in_the_packages_is_over_450_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for package in ("trainer", "modules", "datamodules") for p in (ROOT / package).rglob("*.py")}
    assert len(sizes) > 20
    assert {p: n for p, n in sizes.items() if n > 450} == {}
