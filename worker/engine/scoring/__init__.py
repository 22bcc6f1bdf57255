"""Per-sample gradient features, the gradient store, TracIn / influence scores and selection."""

from worker.engine.scoring.config import ScoreConfig, SelectionConfig
from worker.engine.scoring.features import ScoreStats
from worker.engine.scoring.run import ScoreBatch, score_stream
from worker.engine.scoring.select import RankedRecord, rank

__all__ = [
    "RankedRecord",
    "ScoreBatch",
    "ScoreConfig",
    "ScoreStats",
    "SelectionConfig",
    "rank",
    "score_stream",
]
