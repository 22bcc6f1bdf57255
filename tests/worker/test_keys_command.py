"""``iprox keys create``, ``list`` and ``revoke`` (and ``python -m service.admin keys``) against
the service tier's Postgres, checked through the API's own authentication."""

from __future__ import annotations

import argparse
import json
import uuid

import pytest
from fastapi.testclient import TestClient

from service import admin
from service.auth.keys import create_key
from service.db import session_scope
from worker.cli import main


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_revoked_key_is_refused_and_the_tenants_other_key_still_works(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    with session_scope() as s:
        ci, laptop = create_key(s, tenant, name="ci"), create_key(s, tenant, name="laptop")
    for key in (ci, laptop):
        assert client.get("/jobs", headers=_bearer(key.key)).status_code == 200

    assert main(["keys", "list", "--tenant", tenant]) == 0
    table = capsys.readouterr().out
    header, *rows = table.splitlines()
    assert header.split() == ["ID", "TENANT", "NAME", "PREFIX", "SCOPE", "CREATED", "REVOKED"]
    assert [r.split()[:5] for r in rows] == [
        [ci.key_id, tenant, "ci", ci.key[:12], "write"],
        [laptop.key_id, tenant, "laptop", laptop.key[:12], "write"],
    ]
    assert all(r.split()[-1] == "-" for r in rows)  # none revoked yet
    assert ci.key not in table and laptop.key not in table

    assert main(["keys", "revoke", ci.key_id]) == 0
    assert capsys.readouterr().out.startswith(f"revoked key {ci.key_id}")
    r = client.get("/jobs", headers=_bearer(ci.key))
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert client.get("/jobs", headers=_bearer(laptop.key)).status_code == 200

    listed = {k["id"]: k for k in json.loads(admin.list_api_keys(tenant, as_json=True))}
    revoked_at = listed[ci.key_id]["revoked_at"]
    assert revoked_at is not None and listed[laptop.key_id]["revoked_at"] is None
    assert all("key" not in k and set(k) >= {"prefix", "created_at"} for k in listed.values())
    assert {k["scope"] for k in listed.values()} == {"write"}

    # Revoking again is not an error and keeps the first revocation time.
    assert admin.main(["keys", "revoke", ci.key_id]) == 0
    assert "already revoked" in capsys.readouterr().out
    again = {k["id"]: k for k in json.loads(admin.list_api_keys(tenant, as_json=True))}
    assert again[ci.key_id]["revoked_at"] == revoked_at
    assert client.get("/jobs", headers=_bearer(ci.key)).status_code == 401


def test_a_read_key_from_the_command_line_reads_and_is_listed_with_its_scope(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    assert main(["keys", "create", "--tenant", tenant, "--name", "dash", "--scope", "read"]) == 0
    read_key = capsys.readouterr().out.strip()
    assert admin.main(["keys", "create", "--tenant", tenant, "--name", "ci"]) == 0
    write_key = capsys.readouterr().out.strip()
    assert client.get("/jobs", headers=_bearer(read_key)).status_code == 200
    r = client.post("/webhooks/secret", headers=_bearer(read_key))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert client.post("/webhooks/secret", headers=_bearer(write_key)).status_code == 200

    assert main(["keys", "list", "--tenant", tenant]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    scope = header.split().index("SCOPE")
    assert {r.split()[2]: r.split()[scope] for r in rows} == {"dash": "read", "ci": "write"}
    assert main(["keys", "list", "--tenant", tenant, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {k["name"]: k["scope"] for k in listed} == {"dash": "read", "ci": "write"}


def test_a_scope_other_than_read_or_write_is_refused_naming_scope(
    service_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.auth.keys import SCOPES, list_keys
    from service.errors import ValidationFailed
    from worker.cli import build_parser

    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", "--tenant", tenant, "--scope", "admin"])
    assert exited.value.code == 2
    assert "--scope: invalid choice: 'admin'" in capsys.readouterr().err
    with pytest.raises(ValidationFailed) as refused:
        admin.create_api_key(tenant, scope="admin")
    assert refused.value.field == "scope" and "'read' or 'write'" in refused.value.detail
    with session_scope() as s:
        assert list_keys(s, tenant) == []  # nothing stored, not even the tenant's key
    # The command line's choices are the service's scopes (keys_cli imports only argparse).
    args = build_parser().parse_args(["keys", "create", "--tenant", tenant])
    assert args.scope == "write"
    create = next(a for a in sub_actions(build_parser(), "keys", "create") if a.dest == "scope")
    assert tuple(create.choices or ()) == SCOPES


def sub_actions(parser: argparse.ArgumentParser, *names: str) -> list[argparse.Action]:
    """The actions of the sub-command ``names`` of ``parser``."""
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return list(parser._actions)


def test_revoking_an_unknown_id_is_a_clear_error(
    service_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(uuid.uuid4())
    assert main(["keys", "revoke", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iprox: error: ") and f"no API key with id '{missing}'" in err


def test_both_command_lines_declare_keys_once_and_iprox_stays_light() -> None:
    import subprocess
    import sys

    from worker.cli import build_parser

    def sub(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def actions(parser: argparse.ArgumentParser) -> dict[str, str | None]:
        return {a.dest: a.help for a in sub(parser)._choices_actions}

    iprox = sub(build_parser()).choices["keys"]
    admin_parser = argparse.ArgumentParser(prog="python -m service.admin")
    admin.add_key_commands(admin_parser, admin_parser.prog)
    assert actions(iprox) == actions(admin_parser)
    code = "import sys, worker.commands.keys; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
