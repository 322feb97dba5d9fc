"""The workflow's JSON schemas (workflow/schemas/*.schema.yaml): where formats are stated."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"


@cache
def load_schema(name: str) -> dict:
    """workflow/schemas/{name}.schema.yaml as a dict (read once per process)."""
    return yaml.safe_load((SCHEMAS_DIR / f"{name}.schema.yaml").read_text(encoding="utf-8"))
