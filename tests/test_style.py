"""The code stays formatted and lint-clean (ruff, snakefmt, snakemake --lint) and keeps its
layers (import-linter's contracts in pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import REPO_ROOT, SCRIPTS_DIR, workflow_env

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["snakefmt", "--check", "Snakefile", "workflow"],
        ["lint-imports"],
    ],
    ids=["ruff-check", "ruff-format", "snakefmt", "import-linter"],
)
def test_style(command):
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS_DIR)}  # the packages lint-imports checks
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_is_clean():
    result = subprocess.run(
        [str(BIN / "snakemake"), "--lint"],
        cwd=REPO_ROOT,
        env=workflow_env(),
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in output


def test_the_contract_against_importing_scripts_names_every_script():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if "imports a script" in c["name"]]
    scripts = sorted(p.stem for p in SCRIPTS_DIR.glob("*.py"))
    assert sorted(contract["forbidden_modules"]) == scripts
