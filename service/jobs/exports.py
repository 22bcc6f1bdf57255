"""Files a job's results download as: the subset (JSONL, JSON, Parquet) and every score (JSONL,
CSV, Parquet), streamed so that neither the API's memory nor a database connection is held by
the size of a pool.

Scores are read from the database page by page, each page in a session of its own (keyset
pagination), so a slow client holds no connection while it reads.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterator
from typing import IO, Any, Literal

from service.db import session_scope
from service.jobs import repository as repo
from service.models import Score

ScoreOrder = Literal["index", "rank"]
ScoreFileFormat = Literal["jsonl", "csv", "parquet"]
_PAGE = 5000
_ROWS_PER_GROUP = 1024
_SPOOL_BYTES = 16 << 20


def score_rows(job_id: str, order: ScoreOrder) -> Iterator[dict[str, Any]]:
    """Every score of the job as ``{index, id, score}`` (plus ``rank``, 1-based, in rank
    order), a page at a time."""
    after_index = -1
    after_key: tuple[float, int] | None = None
    rank = 0
    while True:
        with session_scope() as session:
            rows: list[Score]
            if order == "rank":
                rows = repo.scores_by_rank(session, job_id, after=after_key, limit=_PAGE)
            else:
                rows = repo.list_scores(session, job_id, after=after_index, limit=_PAGE)
            page = [(r.sample_index, r.sample_id, r.score) for r in rows]
        for index, sample_id, score in page:
            row: dict[str, Any] = {"index": index, "id": sample_id, "score": score}
            if order == "rank":
                rank += 1
                row["rank"] = rank
            yield row
        if len(page) < _PAGE:
            return
        after_index = page[-1][0]
        after_key = (page[-1][2], page[-1][0])


def _columns(order: ScoreOrder) -> list[str]:
    return ["index", "id", "score", *(["rank"] if order == "rank" else [])]


def scores_text(
    rows: Iterator[dict[str, Any]], fmt: ScoreFileFormat, order: ScoreOrder
) -> Iterator[bytes]:
    """JSONL lines or CSV rows (with a header), as they come."""
    if fmt == "jsonl":
        for row in rows:
            yield (json.dumps(row) + "\n").encode()
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(order), lineterminator="\n")
    writer.writeheader()
    for n, row in enumerate(rows, start=1):
        writer.writerow(row)
        if n % 1000 == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def scores_parquet(rows: Iterator[dict[str, Any]], order: ScoreOrder) -> IO[bytes]:
    """The scores as one Parquet file (spooled to disk past 16 MiB), open at its start."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [("index", pa.int64()), ("id", pa.string()), ("score", pa.float64())]
    schema = pa.schema(fields + ([("rank", pa.int64())] if order == "rank" else []))
    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 (returned open)
    with pq.ParquetWriter(out, schema) as writer:
        chunk: list[dict[str, Any]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == _ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
    out.seek(0)
    return out  # type: ignore[return-value]


def parquet_head(fh: IO[bytes], top_k: int) -> IO[bytes]:
    """The first ``top_k`` rows of a Parquet file as a new Parquet file, open at its start."""
    import pyarrow.parquet as pq

    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 (returned open)
    with fh:
        pf = pq.ParquetFile(fh)
        with pq.ParquetWriter(out, pf.schema_arrow) as writer:
            left = top_k
            for batch in pf.iter_batches(batch_size=_ROWS_PER_GROUP):
                if left <= 0:
                    break
                writer.write_batch(batch.slice(0, left))
                left -= batch.num_rows
    out.seek(0)
    return out  # type: ignore[return-value]


def chunks(fh: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """A binary file's bytes, a chunk at a time; the file is closed at the end."""
    with fh:
        while chunk := fh.read(size):
            yield chunk
