"""Writes schema/<task>.schema.json from the contract; tests/test_schema.py holds them equal."""
import json
from pathlib import Path

from featurevis import atlas, contract

ROOT = Path(__file__).resolve().parent.parent

TASKS = ("featurevis.optimize", "featurevis.sweep")

if __name__ == "__main__":
    for task in TASKS:
        path = ROOT / "schema" / f"{task}.schema.json"
        path.write_text(json.dumps(contract.json_schema(task), indent=2) + "\n")
        print(f"wrote {path}")
    path = ROOT / "schema" / "featurevis.atlas.schema.json"
    path.write_text(json.dumps(atlas.json_schema(), indent=2) + "\n")
    print(f"wrote {path}")
