import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_openapi_document_in_docs_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_openapi", ROOT / "scripts" / "gen_openapi.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    committed = (ROOT / "docs" / "reference" / "openapi.json").read_text()
    assert committed == mod.render(), "run `.venv/bin/python scripts/gen_openapi.py` and commit the result"
