"""The import contract in pyproject.toml ([tool.importlinter], issue 32): the parts import downwards only
(plugin | cli -> training | export -> core), the core and training import no Qt or napari, the core no YAML,
and the core's modules import each other without circles. ``lint-imports`` checks it here, so CI fails on a
Qt import in the core, an upward import or a circle; the second test shows that it would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root/src`` with ``root/pyproject.toml``'s contracts."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.is_file():
        exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[testing]' (it is in the testing extra)")
    env = dict(os.environ, PYTHONPATH=str(root / "src"))  # this copy of napari_vdir, not the installed one
    # run in ``root``: lint-imports reads the pyproject.toml there
    return subprocess.run([str(exe), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_parts_keep_the_import_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("core/devices.py", "import qtpy", "no Qt, napari or widget toolkit"),
    ("core/nets.py", "from napari_vdir.plugin import layers", "Parts:"),
    ("core/tasks.py", "from napari_vdir.core import api", "without circles"),
])
def test_a_broken_contract_fails(tmp_path, module, line, contract):
    """A copy of the package with one forbidden import planted: lint-imports names the broken contract."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = tmp_path / "src" / "napari_vdir" / module
    planted.write_text(planted.read_text() + f"\n\ndef _planted():\n    {line}\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0 and re.search(r"Contracts: \d+ kept, [1-9]\d* broken", done.stdout), done.stdout
    report = done.stdout.split("Broken contracts", 1)
    assert len(report) == 2 and contract in report[1], done.stdout


def test_old_module_names_still_import_with_a_warning():
    """Names of earlier releases resolve to their new homes (napari_vdir._moved), with a FutureWarning."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for old in ("napari_vdir.user_models", "napari_vdir.weights"):
            sys.modules.pop(old, None)
        from napari_vdir.user_models import user_models_dir
        from napari_vdir.weights import read_info, resolve_model
    from napari_vdir.core import models, weights

    assert user_models_dir is models.user_models_dir and resolve_model is models.resolve_model
    assert read_info is weights.read_info
    moved = [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]
    assert any("napari_vdir.user_models moved to napari_vdir.core.models" in m for m in moved), moved
    assert any("napari_vdir.weights moved to napari_vdir.core.weights and napari_vdir.core.models" in m
               for m in moved), moved
