"""Every service's OpenAPI document, as its app serves it at /openapi.json; `python -m
shared.openapi` writes them to docs/openapi/, and a unit test fails when they are stale."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from shared.cli import SERVICES
from shared.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "openapi"


def render(service: str) -> str:
    module = importlib.import_module(SERVICES[service][0])
    app = module.create_service(Settings()).http
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        (DOCS / f"{service}.json").write_text(render(service))
        print(DOCS / f"{service}.json")


if __name__ == "__main__":
    main()
