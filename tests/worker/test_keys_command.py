"""``iprox keys list`` and ``iprox keys revoke`` (and ``python -m service.admin keys``) against
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
    assert header.split() == ["ID", "TENANT", "NAME", "PREFIX", "CREATED", "REVOKED"]
    assert [r.split()[:4] for r in rows] == [
        [ci.key_id, tenant, "ci", ci.key[:12]],
        [laptop.key_id, tenant, "laptop", laptop.key[:12]],
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

    # Revoking again is not an error and keeps the first revocation time.
    assert admin.main(["keys", "revoke", ci.key_id]) == 0
    assert "already revoked" in capsys.readouterr().out
    again = {k["id"]: k for k in json.loads(admin.list_api_keys(tenant, as_json=True))}
    assert again[ci.key_id]["revoked_at"] == revoked_at
    assert client.get("/jobs", headers=_bearer(ci.key)).status_code == 401


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
