"""Apply the Alembic migrations: a start-up step (``iprox migrate``, ``iprox serve``, the compose
``migrate`` service), never part of request handling."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[1]


def alembic_config(url: str) -> Config:
    """Alembic config for ``url`` using the repository's ``alembic.ini`` and ``migrations/``."""
    # Beside the package in a checkout; in the working directory when the package is installed
    # into site-packages (the Docker images run from /app, which holds alembic.ini).
    candidates = [ROOT / "alembic.ini", Path.cwd() / "alembic.ini"]
    ini = next((c for c in candidates if c.is_file()), None)
    if ini is None:
        raise FileNotFoundError(f"alembic.ini not found in {ROOT} or {Path.cwd()}")
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
