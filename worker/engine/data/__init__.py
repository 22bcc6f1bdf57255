"""Records (what users give us) and examples (what the model sees)."""

from worker.engine.data.records import Record, iter_records, load_records, record_from_obj
from worker.engine.data.tokenize import (
    IGNORE_INDEX,
    Example,
    batches,
    collate,
    encode,
    encode_all,
    pad_token_id,
    render,
)

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "Record",
    "batches",
    "collate",
    "encode",
    "encode_all",
    "iter_records",
    "load_records",
    "pad_token_id",
    "record_from_obj",
    "render",
]
