"""The floors run one way: ``trainer/`` stands on ``modules/`` and ``datamodules/``, which never reach up."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Blocks `trainer` (a None entry in sys.modules makes every `import trainer...` raise ImportError), then imports
# every file of the package, lazy imports inside functions included: they are listed from the source.
PROBE = r"""
import ast, importlib, json, pathlib, sys
sys.modules["trainer"] = None
package = sys.argv[1]
found = {}
for path in sorted(pathlib.Path(package).glob("*.py")):
    name = f"{package}.{path.stem}" if path.stem != "__init__" else package
    importlib.import_module(name)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for target in names:
            if target == "trainer" or target.startswith("trainer."):
                found.setdefault(name, []).append(target)
print("RESULT " + json.dumps(found))
"""


@pytest.mark.parametrize("package", ["modules", "datamodules"])
def test_lower_floors_never_import_trainer(package):
    proc = subprocess.run([sys.executable, "-c", PROBE, package], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.split("RESULT ", 1)[1]) == {}
