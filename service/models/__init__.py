"""SQLAlchemy ORM models; importing this package registers every table on ``Base.metadata``."""

from service.models.base import Base
from service.models.calibration import Calibration
from service.models.job import (
    Job,
    JobEvent,
    JobKind,
    JobLabel,
    JobShard,
    JobStage,
    JobStatus,
    Score,
    ShardStatus,
)
from service.models.proxy import Proxy
from service.models.tenant import ApiKey, KeyScope, Tenant

__all__ = [
    "ApiKey",
    "Base",
    "Calibration",
    "Job",
    "JobEvent",
    "JobKind",
    "JobLabel",
    "JobShard",
    "JobStage",
    "JobStatus",
    "KeyScope",
    "Proxy",
    "Score",
    "ShardStatus",
    "Tenant",
]
