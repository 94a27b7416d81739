"""docs/reliability.md lists every case of this suite (regenerate it with
`python docs/reliability_table.py` when a case is added)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_reliability_table_lists_every_case():
    sys_path = ROOT / "docs"
    import sys

    sys.path.insert(0, str(sys_path))
    try:
        from reliability_table import _sentence
    finally:
        sys.path.remove(str(sys_path))
    table = (ROOT / "docs" / "reliability.md").read_text()
    for module in sorted((ROOT / "tests" / "reliability").glob("test_*.py")):
        if module.name == "test_report.py":
            continue
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                assert f"| {_sentence(node.name)} |" in table, f"{module.name}::{node.name} missing from docs/reliability.md"
