"""Writes schema/<task>.schema.json from the contract; tests/test_schema.py holds them equal."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featurevis import contract  # noqa: E402

TASKS = ("featurevis.optimize", "featurevis.sweep")

if __name__ == "__main__":
    for task in TASKS:
        path = ROOT / "schema" / f"{task}.schema.json"
        path.write_text(json.dumps(contract.json_schema(task), indent=2) + "\n")
        print(f"wrote {path}")
