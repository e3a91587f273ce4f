"""What the repository publishes about itself matches the code."""

import json
from pathlib import Path

import yaml

from shared.asyncapi import TOPIC_MESSAGES, render
from shared.cli import SERVICES
from shared.settings import Settings
from shared.topics import ALL_TOPICS

ROOT = Path(__file__).resolve().parents[2]


def test_asyncapi_document_is_generated_from_the_current_contracts():
    committed = (ROOT / "docs" / "asyncapi.json").read_text()
    assert committed == render(), "regenerate: python -m shared.asyncapi > docs/asyncapi.json"


def test_every_topic_is_described_with_its_messages():
    assert set(TOPIC_MESSAGES) == set(ALL_TOPICS)
    document = json.loads(render())
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {t.name for t in ALL_TOPICS}


def test_docker_compose_matches_settings_and_services():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["postgres"]["image"].startswith("postgres:")
    assert set(SERVICES) <= set(services)
    settings_fields = {name.upper() for name in Settings.model_fields}
    for name in SERVICES:
        service = services[name]
        assert service["command"][:2] == ["serve", name]
        assert set(service["environment"]) <= settings_fields
        port_setting = SERVICES[name][1]
        default_port = Settings.model_fields[port_setting].default
        assert str(default_port) in service["command"], name
    migrate = services["migrate"]
    assert migrate["command"] == ["setup"]


def test_readme_topic_map_lists_every_topic():
    readme = (ROOT / "README.md").read_text()
    for topic in ALL_TOPICS:
        assert f"`{topic.name}`" in readme, topic.name


def test_openapi_documents_are_generated_from_the_current_apis():
    from shared.openapi import DOCS
    from shared.openapi import render as render_openapi

    for service in SERVICES:
        committed = (DOCS / f"{service}.json").read_text()
        assert committed == render_openapi(service), \
            f"regenerate: python -m shared.openapi ({service})"


def test_every_route_but_health_and_the_signed_webhook_needs_a_key():
    from shared.openapi import DOCS

    for service in SERVICES:
        document = json.loads((DOCS / f"{service}.json").read_text())
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                open_to_all = path == "/health" or path == "/webhooks/payments"
                assert bool(operation.get("security")) != open_to_all, (service, method, path)
                errors = {code for code in operation["responses"] if code.startswith("4")}
                for code in errors:
                    content = operation["responses"][code]["content"]
                    assert list(content) == ["application/problem+json"], (path, code)
