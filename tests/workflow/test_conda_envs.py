"""Every rule's conda environment (workflow/envs/, for `--sdm conda`) provides what its
script imports: following the script's module-level imports through our own packages
(imports inside functions run only where they are needed), every third-party package our
code loads must be pinned in that environment."""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT, SCRIPTS_DIR

RULES = REPO_ROOT / "workflow" / "rules"
OURS = {"fmnist", "bench"}
PACKAGES = {"yaml": "pyyaml"}  # import name -> the package name an environment pins


def rule_scripts() -> list[tuple[str, str, str]]:
    """(rule, script, environment file) of every rule that runs a script in an environment."""
    found = []
    for path in sorted(RULES.glob("*.smk")):
        for block in re.split(r"\n(?=rule |use rule )", path.read_text()):
            env = re.search(r'conda:\s*"\.\./envs/([\w.]+)"', block)
            script = re.search(r'script_path\("([\w.]+)"\)', block)
            if env and script:
                found.append((block.split()[1].rstrip(":"), script[1], env[1]))
    return found


def module_file(name: str) -> Path | None:
    base = SCRIPTS_DIR.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.cache
def module_level_imports(path: Path) -> frozenset[str]:
    """Dotted names a module imports when it is loaded (not inside its functions)."""
    names, pending = set(), list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            pending += [*node.body, *getattr(node, "orelse", []), *getattr(node, "handlers", [])]
        elif isinstance(node, ast.ExceptHandler):
            pending += node.body
    return frozenset(names)


def third_party_imports(script: str) -> set[str]:
    """Top-level third-party modules loaded by importing ``script``."""
    seen, external, pending = set(), set(), [SCRIPTS_DIR / script]
    while pending:
        path = pending.pop()
        for name in module_level_imports(path):
            top = name.split(".")[0]
            if top not in OURS:
                external.add(top)
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # a package's __init__ runs too
                found = module_file(".".join(parts[:depth]))
                if found is not None and found not in seen:
                    seen.add(found)
                    pending.append(found)
    return external - set(sys.stdlib_module_names) - {"__future__"}


def pinned(env: str) -> set[str]:
    spec = yaml.safe_load((REPO_ROOT / "workflow" / "envs" / env).read_text())
    names = set()
    for item in spec["dependencies"]:
        for entry in item["pip"] if isinstance(item, dict) else [item]:
            names.add(re.split(r"[=<>]", entry)[0].strip().lower())
    return names


@pytest.mark.parametrize(("rule", "script", "env"), rule_scripts(), ids=lambda x: str(x))
def test_each_rules_environment_provides_its_scripts_imports(rule, script, env):
    needed = {PACKAGES.get(n, n).lower() for n in third_party_imports(script)}
    assert needed, f"{script}: found no imports at all"  # the walk itself works
    assert needed <= pinned(env), f"{rule} ({script}) imports {sorted(needed - pinned(env))}"


def test_the_training_environment_would_miss_pandas_without_its_pin():
    """verify.py imports pandas when it is loaded: the comparison's environment needs it."""
    assert "pandas" in third_party_imports("verify.py")
    assert "torch" in third_party_imports("train.py")
