"""docker-compose's Kafka is the local stack's secure broker: its scripts are what
deploy/kafka_compose.py makes from the topic map, and every service runs as its own user.
(tests/integration/test_kafka_acls.py runs the scripts against a real broker.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.kafka_compose import acl_commands, generated, password_variable
from deploy.launcher import KAFKA_USERS
from shared.kafka_security import ADMIN_USER, Acl, acls, users

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_the_checked_in_scripts_are_what_the_topic_map_makes():
    for path, text in generated().items():
        assert path.read_text() == text, "regenerate: python -m deploy.kafka_compose"


def test_the_broker_knows_every_user_and_the_services_run_as_their_own(compose):
    services = compose["services"]
    assert services["kafka"]["command"] == ["sh", "/cloudwallet/broker.sh"]
    assert services["kafka-acls"]["command"] == ["sh", "/cloudwallet/acls.sh"]
    assert set(services["kafka"]["environment"]) == {
        password_variable(user) for user in [ADMIN_USER, *users()]}
    for service, user in KAFKA_USERS.items():
        env = services[service]["environment"]
        assert env["KAFKA_SASL_USERNAME"] == user, service
        assert env["KAFKA_SASL_PASSWORD"].startswith("${" + password_variable(user) + ":")
    setup = services["migrate"]["environment"]
    assert setup["KAFKA_SASL_USERNAME"] == ADMIN_USER
    assert services["migrate"]["depends_on"]["kafka-acls"]["condition"] == \
        "service_completed_successfully"


def test_every_acl_is_granted_by_exactly_one_call():
    granted = []
    for args in acl_commands(acls()):
        flags = dict(a.split("=", 1) for a in args if not a.startswith(("--operation=",
                                                                        "--topic=",
                                                                        "--group=")))
        user = flags["--allow-principal"].removeprefix("User:")
        pattern = flags["--resource-pattern-type"].upper()
        operations = [a.split("=", 1)[1].upper() for a in args if a.startswith("--operation=")]
        resources = [(a[2:7].upper(), a.split("=", 1)[1]) for a in args
                     if a.startswith(("--topic=", "--group="))]
        granted += [Acl(user, kind, pattern, name, op)
                    for kind, name in resources for op in operations]
    assert sorted(granted, key=Acl.line) == sorted(acls(), key=Acl.line)


def test_a_password_variable_is_named_after_its_user():
    assert password_variable("vcenter-hooks") == "KAFKA_PASSWORD_VCENTER_HOOKS"
    assert password_variable(ADMIN_USER) == "KAFKA_PASSWORD_ADMIN"


@pytest.mark.parametrize(("admin_password", "complaint"), [
    (None, "KAFKA_PASSWORD_ADMIN must be set"),
    ("short", "KAFKA_PASSWORD_ADMIN must be set"),
    ('a-long-password" admin="x', "KAFKA_PASSWORD_ADMIN may hold only"),
])
def test_the_broker_will_not_start_on_a_missing_or_unsafe_password(tmp_path, admin_password,
                                                                   complaint):
    import os
    import subprocess

    env = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(tmp_path),
           "KAFKA_CONFIG": str(tmp_path / "server.properties"),
           **{password_variable(u): "a-long-enough-password" for u in users()}}
    if admin_password is not None:
        env[password_variable(ADMIN_USER)] = admin_password
    script = next(path for path in generated() if path.name == "broker.sh")
    run = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 1
    assert complaint in run.stderr
    assert not (tmp_path / "server.properties").exists()
