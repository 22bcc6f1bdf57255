"""Writing scores and selections: JSONL (one object per line, UTF-8), a JSON list, or Parquet.

There is one selection writer, used by the CLI and the service's workers alike. It streams: rows
go to a temporary file next to the destination as they come (Parquet in row groups of
``ROWS_PER_GROUP``), and the file replaces the destination only once it is whole.

The selection keeps each record's original fields unchanged and adds ``rank`` (1 is the best)
and ``score``. A record that already has a field of either name is refused
(:class:`DataFormatError` naming the record) rather than overwritten: a pool with its own
``score`` column (a quality score, say) must rename it first, so that no output ever holds a
value that is not what its name says.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from worker.engine.errors import ConfigError, DataFormatError
from worker.engine.scoring.select import RankedRecord

RESERVED = ("rank", "score")
FORMATS = ("jsonl", "json", "parquet")
Format = Literal["jsonl", "json", "parquet"]
ROWS_PER_GROUP = 1024


def jsonable(value: Any) -> Any:
    """``json.dumps`` default for the values columnar files hold and JSON has no type for:
    dates and times as ISO 8601 text, bytes as base64, decimals as text."""
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"a value of type {type(value).__name__} has no JSON form")


def dumps(obj: Mapping[str, Any]) -> str:
    """One JSON object on one line (non-JSON values as :func:`jsonable` writes them)."""
    return json.dumps(obj, default=jsonable, ensure_ascii=False)


def check_fields(fields: Mapping[str, Any], index: int, record_id: str) -> None:
    """Refuse a record whose own fields the selection output would overwrite."""
    clash = [k for k in RESERVED if fields.get(k) is not None]  # a null column is no value
    if clash:
        raise DataFormatError(
            f"record {index} (id {record_id!r}) already has field(s) {', '.join(clash)}; "
            "the selection output adds 'rank' and 'score' (rename the field in the pool)"
        )


def selection_rows(ranked: Iterable[RankedRecord]) -> Iterator[dict[str, Any]]:
    """Each selected record as its output row: original fields plus ``rank`` and ``score``."""
    for r in ranked:
        check_fields(r.fields, r.index, r.id)
        yield {**r.fields, "rank": r.rank, "score": r.score}


def _replace_when_whole(path: Path, write: Any) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        count = int(write(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _write_text(fh: IO[str], rows: Iterable[Mapping[str, Any]], fmt: Format) -> int:
    n = 0
    if fmt == "json":
        fh.write("[")
    for n, row in enumerate(rows, start=1):
        if fmt == "json":
            fh.write(("," if n > 1 else "") + "\n" + dumps(row))
        else:
            fh.write(dumps(row) + "\n")
    if fmt == "json":
        fh.write("\n]\n" if n else "]\n")
    return n


def _chunks(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == ROWS_PER_GROUP:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def parquet_schema(rows: Iterable[dict[str, Any]]) -> Any:
    """One Arrow schema that every row fits: each chunk's inferred schema, unified with
    permissive promotion (a column null in one chunk and text in another is text). A field whose
    values have types no promotion joins (text here, numbers there) is a DataFormatError."""
    import pyarrow as pa

    schemas = []
    try:
        for chunk in _chunks(rows):
            # By column over every key of the chunk (from_pylist would take the first row's).
            keys = list(dict.fromkeys(k for row in chunk for k in row))
            schemas.append(
                pa.Table.from_pydict({k: [r.get(k) for r in chunk] for k in keys}).schema
            )
        if not schemas:
            return pa.schema([("rank", pa.int64()), ("score", pa.float64())])
        return pa.unify_schemas(schemas, promote_options="permissive")
    except pa.ArrowException as exc:  # invalid, type or not-implemented
        raise DataFormatError(
            f"the records' fields have no single Parquet type each ({exc}); use JSONL"
        ) from None


def write_parquet(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` to a Parquet file, reading them twice (schema, then data): ``rows`` must
    be re-iterable (a list, or an object whose ``__iter__`` streams them again)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if iter(rows) is rows:
        raise ConfigError(
            "Parquet output reads the rows twice; pass a re-iterable, not an iterator"
        )
    schema = parquet_schema(rows)

    def write(tmp: Path) -> int:
        n = 0
        with pq.ParquetWriter(tmp, schema) as writer:
            for chunk in _chunks(rows):
                try:
                    writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                except pa.ArrowException as exc:  # invalid, type or not-implemented
                    raise DataFormatError(
                        f"a record does not fit the Parquet schema ({exc}); use JSONL"
                    ) from None
                n += len(chunk)
            if n == 0:
                writer.write_table(schema.empty_table())
        return n

    return _replace_when_whole(path, write)


class _Rows:
    """Output rows of a re-iterable selection, built anew on every iteration."""

    def __init__(self, ranked: Iterable[RankedRecord]) -> None:
        self.ranked = ranked

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return selection_rows(self.ranked)


def write_selection(path: Path, ranked: Iterable[RankedRecord], fmt: Format = "jsonl") -> int:
    """Write the selected records in rank order to ``path``; returns how many.

    ``fmt``: ``jsonl``, ``json`` (one list) or ``parquet`` (which reads ``ranked`` twice, for
    the schema and the rows, so it must be re-iterable). A record with its own ``rank`` or
    ``score`` field is a :class:`DataFormatError`, and nothing is written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown selection format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        if iter(ranked) is ranked:
            raise ConfigError(
                "Parquet output reads the selection twice; pass a re-iterable, not an iterator"
            )
        return write_parquet(path, _Rows(ranked))

    def write(tmp: Path) -> int:
        with tmp.open("w", encoding="utf-8") as fh:
            return _write_text(fh, selection_rows(ranked), fmt)

    return _replace_when_whole(path, write)


def format_of(path: Path) -> Format:
    """The selection format a file name asks for: ``.parquet``, ``.json``, else JSONL."""
    suffix = path.suffix.lower()
    return "parquet" if suffix == ".parquet" else "json" if suffix == ".json" else "jsonl"


def write_scores(path: Path, scores: Mapping[int, float], ids: Mapping[int, str]) -> None:
    """``{"index", "id", "score"}`` for every scored sample, by index (JSONL)."""

    def write(tmp: Path) -> int:
        with tmp.open("w", encoding="utf-8") as fh:
            for i in sorted(scores):
                fh.write(json.dumps({"index": i, "id": ids[i], "score": scores[i]}) + "\n")
        return len(scores)

    _replace_when_whole(path, write)
