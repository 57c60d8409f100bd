"""Write the API's OpenAPI document to docs/reference/openapi.json (a unit test checks it is up to date)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from corral.api.app import create_app

TARGET = Path(__file__).resolve().parent.parent / "docs" / "reference" / "openapi.json"


def render() -> str:
    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}", file=sys.stderr)
