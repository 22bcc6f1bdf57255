"""Apply the Alembic migrations: a start-up step (``iprox migrate``, ``iprox serve``, the compose
``migrate`` service), never part of request handling."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[1]


def alembic_config(url: str) -> Config:
    """Alembic config for ``url`` using the repository's ``alembic.ini`` and ``migrations/``."""
    ini = ROOT / "alembic.ini"
    if not ini.is_file():
        raise FileNotFoundError(f"{ini} is missing: migrations ship beside the service package")
    cfg = Config(str(ini))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
