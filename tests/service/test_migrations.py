"""Alembic migrations on both back ends: upgrade, downgrade, upgrade again, and the migrated
schema equals the ORM metadata (no drift between models and revisions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from service.db import make_engine
from service.jobs import repository as repo
from service.migrate import downgrade, upgrade
from service.models import Base, Job, JobKind
from service.models.tenant import Tenant
from tests.service.kit import fresh_postgres

TABLES = {
    "tenants",
    "api_keys",
    "jobs",
    "job_labels",
    "job_events",
    "job_shards",
    "scores",
    "proxies",
    "calibrations",
}


def _check_round_trip(url: str) -> None:
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    engine.dispose()
    downgrade(url, "base")
    engine = make_engine(url)
    assert not TABLES & set(inspect(engine).get_table_names())
    engine.dispose()
    upgrade(url)


def test_sqlite_migrations_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'iprox.db'}"
    upgrade(url)
    _check_round_trip(url)


def test_postgres_migrations_round_trip() -> None:
    with fresh_postgres() as url:
        _check_round_trip(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_score_upsert_overwrites_on_both_backends(backend: str, tmp_path: Path) -> None:
    def run(url: str) -> None:
        engine = make_engine(url)
        with Session(engine) as s, s.begin():
            tenant = Tenant(name="t")
            s.add(tenant)
            s.flush()
            job = Job(tenant_id=tenant.id, kind=JobKind.SELECT, request={}, request_hash="h")
            s.add(job)
            s.flush()
            repo.upsert_scores(s, job.id, [(0, "a", 1.0), (1, "b", 2.0)])
            repo.upsert_scores(s, job.id, [(1, "b", 5.0), (2, "c", 3.0)])
            assert repo.all_scores(s, job.id) == {0: 1.0, 1: 5.0, 2: 3.0}
        engine.dispose()

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'iprox.db'}"
        upgrade(url)
        run(url)
    else:
        with fresh_postgres() as url:
            run(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_warmup_stage_is_storable_after_the_migration(backend: str, tmp_path: Path) -> None:
    from service.models import JobStage, JobStatus

    def check(url: str) -> None:
        upgrade(url)
        engine = make_engine(url)
        with Session(engine) as s:
            tenant = Tenant(name="t")
            s.add(tenant)
            s.flush()
            s.add(
                Job(
                    tenant_id=tenant.id,
                    kind=JobKind.SELECT,
                    status=JobStatus.RUNNING,
                    stage=JobStage.WARMUP,
                    request={},
                    request_hash="h",
                )
            )
            s.commit()
        engine.dispose()
        downgrade(url, "0004")  # a warm-up stage is mapped back to loading
        upgrade(url)

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'm.db'}")
    else:
        with fresh_postgres() as url:
            check(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_key_made_before_scopes_keeps_working_with_scope_write(
    backend: str, tmp_path: Path
) -> None:
    from service.auth.keys import KeyAccess, access_for_hash, hash_key, list_keys
    from service.models import KeyScope
    from service.models.base import utcnow
    from service.models.types import UTCDateTime

    # The tables as revision 0006 had them (the ORM's api_keys has a scope column).
    tenants = sa.table("tenants", sa.column("id"), sa.column("name"), sa.column("created_at"))
    api_keys = sa.table(
        "api_keys",
        *(sa.column(c) for c in ("id", "tenant_id", "name", "key_hash", "prefix")),
        sa.column("created_at", UTCDateTime()),
    )
    key = "iprox_made-before-scopes"

    def check(url: str) -> None:
        upgrade(url)
        downgrade(url, "0006")  # fresh_postgres() migrates to head
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.insert(tenants).values(id="t1", name="old", created_at=utcnow()))
            conn.execute(
                sa.insert(api_keys).values(
                    id="k1",
                    tenant_id="t1",
                    name="ci",
                    key_hash=hash_key(key),
                    prefix=key[:12],
                    created_at=utcnow(),
                )
            )
        upgrade(url)
        with Session(engine) as s:
            assert access_for_hash(s, hash_key(key)) == KeyAccess("t1", KeyScope.WRITE)
            assert [(k.id, k.name, k.scope) for k in list_keys(s, "old")] == [("k1", "ci", "write")]
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.text("UPDATE api_keys SET scope = 'admin'"))
        engine.dispose()
        downgrade(url, "0006")  # the column goes; the key stays
        engine = make_engine(url)
        assert "scope" not in {c["name"] for c in inspect(engine).get_columns("api_keys")}
        with engine.connect() as conn:
            assert conn.execute(sa.select(api_keys.c.id, api_keys.c.name)).all() == [("k1", "ci")]
        engine.dispose()
        upgrade(url)

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'keys.db'}")
    else:
        with fresh_postgres() as url:
            check(url)
