"""Dataset URIs: where a file may come from, and a cheap check that it looks like data.

The API checks before anything is queued; the worker resolves the same URI again with
:func:`resolve_file_uri` (so a file swapped for a symlink after submission is still caught) and
downloads remote ones (worker/tasks/inputs.py).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx

from service.errors import ValidationFailed
from service.outbound import OutboundPolicy, OutboundRefused, send_checked
from service.text import unstorable

REMOTE_SCHEMES = ("http", "https", "s3", "gs", "hf")
COLUMNAR = (".parquet", ".arrow")
SUFFIXES = (".jsonl", ".json", ".csv", *COLUMNAR)
_SUFFIX_HINT = "use .jsonl, .json, .csv, .parquet or .arrow"
# hf://datasets/ORG/NAME[@REVISION]/PATH: a file of a dataset repository on the Hugging Face hub
# (huggingface_hub's fsspec file system; a revision with a slash is written %2F-encoded).
HF_URI = re.compile(
    r"^hf://datasets/(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[^/]+))?/(?P<path>.+)$"
)
# Key sets the engine's record reader understands (worker/engine/data/records.py).
RECORD_KEYS: tuple[frozenset[str], ...] = (
    frozenset({"messages"}),
    frozenset({"prompt", "completion"}),
    frozenset({"instruction", "output"}),
    frozenset({"instruction", "response"}),
    frozenset({"question", "answers"}),
    frozenset({"question", "answer"}),
    frozenset({"text"}),
)
_SNIFF_BYTES = 1 << 20
# A local JSONL pool up to this size is counted (newlines, a cheap upper bound on its records)
# so that a top_k it cannot meet is refused before queueing.
COUNT_BYTES = 64 << 20
T = TypeVar("T")


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root.resolve()) for root in roots)


def resolve_file_uri(uri: str, roots: Sequence[Path], field: str) -> Path:
    """The real path of a ``file://`` URI, which must lie under one of ``roots``.

    ``..`` segments are refused outright, and the path is resolved (symlinks followed) before
    the containment check, so no link can point out of a root.
    """
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ValidationFailed(f"{uri!r} is not a file:// URI", field=field)
    raw = unquote(parts.path)
    if not raw.startswith("/"):
        raise ValidationFailed(f"{uri!r}: a file:// URI needs an absolute path", field=field)
    if ".." in Path(raw).parts:
        raise ValidationFailed(f"{uri!r}: '..' segments are not allowed", field=field)
    if not roots:
        raise ValidationFailed(
            "file:// URIs are disabled: no data root is configured (IPROX_DATA_ROOTS)", field=field
        )
    path = Path(raw).resolve()
    if not _within(path, roots):
        shown = ", ".join(str(r) for r in roots)
        raise ValidationFailed(f"{uri!r} lies outside the data roots ({shown})", field=field)
    if not path.exists():
        raise ValidationFailed(f"{uri!r}: no such file or directory", field=field)
    return path


def _check_record(obj: Any, where: str, field: str) -> None:
    if not isinstance(obj, dict):
        raise ValidationFailed(f"{where}: a record must be a JSON object", field=field)
    # A null field counts as absent, as the engine reads it (columnar rows have every column).
    present = {k for k, v in obj.items() if v is not None}
    if not any(keys <= present for keys in RECORD_KEYS):
        raise ValidationFailed(
            f"{where}: unknown record format (keys: {', '.join(sorted(present)) or 'none'})",
            field=field,
        )


def _first_record_json(doc: Any, where: str, field: str) -> None:
    if isinstance(doc, list):
        if not doc:
            raise ValidationFailed(f"{where}: the list holds no records", field=field)
        _check_record(doc[0], where, field)
    elif isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        first = next((v[0] for v in doc.values() if v), None)
        if first is None:
            raise ValidationFailed(f"{where}: holds no records", field=field)
        _check_record(first, where, field)
    elif isinstance(doc, dict) and doc and all(isinstance(v, str) for v in doc.values()):
        return  # task -> few-shot prompt (BBH); split by the engine
    else:
        _check_record(doc, where, field)


def sniff_text(head: str, suffix: str, where: str, field: str, complete: bool) -> None:
    """Check that the start of a data file parses in a known format."""
    if suffix == ".jsonl":
        line = next((ln for ln in head.splitlines() if ln.strip()), None)
        if line is None:
            raise ValidationFailed(f"{where}: the file holds no records", field=field)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(
                f"{where}: line 1 is not JSON ({exc.msg})", field=field
            ) from None
        _check_record(obj, where, field)
    elif suffix == ".csv":
        row = next(csv.reader(io.StringIO(head)), None)
        if row is None or len(row) != 6:
            raise ValidationFailed(
                f"{where}: expected MMLU-style CSV rows (question,A,B,C,D,answer)", field=field
            )
    elif suffix == ".json":
        if not complete:
            if head.lstrip()[:1] not in ("[", "{"):
                raise ValidationFailed(f"{where}: not a JSON document", field=field)
            return
        try:
            doc = json.loads(head)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"{where}: not valid JSON ({exc.msg})", field=field) from None
        _first_record_json(doc, where, field)
    else:
        raise ValidationFailed(
            f"{where}: unknown file type {suffix!r}; {_SUFFIX_HINT}", field=field
        )


def check_columnar(source: Any, suffix: str, where: str, field: str) -> int | None:
    """Open a Parquet or Arrow IPC file (a seekable binary file) with pyarrow and check that its
    first row is a record in a known format. Returns a Parquet file's row count (its footer
    says), else None; 0 for a file seen to hold no rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if suffix == ".parquet":
            pf = pq.ParquetFile(source)
            rows: int | None = pf.metadata.num_rows
            first = next(pf.iter_batches(batch_size=1), None)
        else:
            rows = None  # counting an Arrow file reads its batches: left to local files
            try:
                reader: Any = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:  # the stream form, as datasets writes it
                source.seek(0)
                batches = iter(pa.ipc.open_stream(source))
            first = next((b for b in batches if b.num_rows), None)
    except (pa.ArrowException, OSError) as exc:
        raise ValidationFailed(
            f"{where}: not a readable {suffix} file ({exc})", field=field
        ) from None
    if first is None:
        return 0
    _check_record(first.slice(0, 1).to_pylist()[0], where, field)
    return rows


def columnar_folder(folder: Path, uri: str, field: str) -> list[Path]:
    """The data files of a ``datasets`` ``save_to_disk`` folder (from its ``state.json``) or of
    a folder of Parquet files; [] when the folder is neither (the engine reads it the same way,
    worker/engine/data/records.py)."""
    state = folder / "state.json"
    if state.is_file():
        try:
            names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValidationFailed(
                f"{uri!r}: state.json is not a datasets save_to_disk state file", field=field
            ) from None
        files = [folder / str(n) for n in names]
        if any(f.parent != folder or not f.is_file() for f in files):
            raise ValidationFailed(
                f"{uri!r}: state.json names data files missing from the folder", field=field
            )
        return files
    if (folder / "dataset_dict.json").is_file():
        raise ValidationFailed(
            f"{uri!r} is a DatasetDict folder; give one split's folder (e.g. {uri}/train)",
            field=field,
        )
    return sorted(folder.glob("*.parquet"))


def _check_columnar_files(files: Sequence[Path], uri: str, field: str) -> int | None:
    """Check the first record of local columnar files (the first file with rows) and count
    their rows from metadata or memory maps (nothing is read whole)."""
    import pyarrow as pa

    checked = False
    total: int | None = 0
    for path in files:
        if not checked:
            with pa.memory_map(str(path), "r") as source:
                checked = check_columnar(source, path.suffix.lower(), uri, field) != 0
        rows = check_columnar_count(path)
        total = None if total is None or rows is None else total + rows
    if not checked:
        raise ValidationFailed(f"{uri!r}: the data set holds no records", field=field)
    return total


def check_columnar_count(path: Path) -> int | None:
    """Rows of a local Parquet file (from its footer) or Arrow file (memory-mapped, no copy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            return int(pq.ParquetFile(path).metadata.num_rows)
        with pa.memory_map(str(path), "r") as source:
            try:
                reader: Any = pa.ipc.open_file(source)
                return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                source.seek(0)
                return sum(b.num_rows for b in pa.ipc.open_stream(source))
    except (pa.ArrowException, OSError):
        return None  # the engine reports the broken file when it reads it


def read_head(fh: IO[bytes], suffix: str, cap: int) -> bytes:
    """The start of a data file: 1 MiB, or for line formats (.jsonl, .csv) as much more as the
    first non-blank line needs, up to ``cap`` bytes (the size limit of a dataset)."""
    head = fh.read(min(_SNIFF_BYTES, cap))
    if suffix not in (".jsonl", ".csv"):
        return head
    chunks, size = [head], len(head)
    text_seen = bool(head.strip())
    done = text_seen and b"\n" in head.lstrip()
    while not done and size < cap:
        chunk = fh.read(min(_SNIFF_BYTES, cap - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if text_seen:
            done = b"\n" in chunk
        elif chunk.strip():
            text_seen, done = True, b"\n" in chunk.lstrip()
    if not done and size >= cap:
        raise ValueError(f"the first record is longer than the limit of {cap} bytes")
    return b"".join(chunks)


def _sniff_file(
    fh: IO[bytes], uri: str, suffix: str, field: str, cap: int, size: int | None
) -> None:
    try:
        head = read_head(fh, suffix, cap)
    except ValueError as exc:
        raise ValidationFailed(f"{uri}: {exc}", field=field) from None
    complete = len(head) < _SNIFF_BYTES if size is None else size <= len(head)
    sniff_text(head.decode("utf-8", errors="replace"), suffix, uri, field, complete=complete)


def count_lines(path: Path) -> int:
    """Newlines in ``path`` (plus an unterminated last line): at least its JSONL records."""
    count, last = 0, b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(_SNIFF_BYTES):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def check_local(path: Path, uri: str, field: str, max_bytes: int) -> int | None:
    """Sniff a local file or folder (a save_to_disk folder, Parquet files, MMLU CSVs). Returns
    an upper bound on the records when it is cheap to know (a JSONL file small enough to count,
    Parquet footers, Arrow files), else None."""
    if path.is_dir():
        columnar = columnar_folder(path, uri, field)
        if columnar:
            return _check_columnar_files(columnar, uri, field)
        csvs = sorted(path.glob("*.csv"))
        if not csvs:
            raise ValidationFailed(
                f"{uri!r}: a folder must be a datasets save_to_disk folder or hold .parquet "
                "or MMLU-style .csv files",
                field=field,
            )
        path = csvs[0]
    suffix = path.suffix.lower()
    if suffix in COLUMNAR:
        return _check_columnar_files([path], uri, field)
    size = path.stat().st_size
    with path.open("rb") as fh:
        _sniff_file(fh, uri, suffix, field, max_bytes, size)
    if suffix == ".jsonl" and size <= COUNT_BYTES:
        return count_lines(path)
    return None


def run_within(total_s: float, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end, or raise TimeoutError once ``total_s`` seconds have passed.

    httpx's timeouts bound each network operation, so a server that trickles a byte now and
    then (headers or body) could hold a request forever; this deadline covers all of it.
    """

    async def bounded() -> T:
        async with asyncio.timeout(total_s):
            return await coro

    return asyncio.run(bounded())


def check_http(
    uri: str,
    field: str,
    *,
    max_bytes: int,
    timeout_s: float,
    total_s: float,
    outbound: OutboundPolicy,
) -> None:
    """HEAD the URL within ``total_s``: a public address (or one ``outbound`` allows) at every
    redirect hop, reachable, 2xx, and not larger than ``max_bytes`` when it says its size."""

    async def head() -> httpx.Response:
        async with httpx.AsyncClient(follow_redirects=False, timeout=timeout_s) as client:
            resp = await send_checked(client, "HEAD", uri, outbound)
            await resp.aclose()
            return resp

    try:
        resp = run_within(total_s, head())
    except OutboundRefused as exc:
        raise ValidationFailed(f"{uri!r} is refused: {exc}", field=field) from None
    except TimeoutError:
        raise ValidationFailed(
            f"{uri!r} did not answer within the limit of {total_s:g} s (IPROX_HTTP_TOTAL_TIMEOUT_S)",
            field=field,
        ) from None
    except httpx.HTTPError as exc:
        raise ValidationFailed(
            f"{uri!r} is unreachable ({type(exc).__name__})", field=field
        ) from None
    if resp.status_code >= 400:
        raise ValidationFailed(f"{uri!r} answered HTTP {resp.status_code}", field=field)
    length = resp.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ValidationFailed(
            f"{uri!r} is {int(length)} bytes, over the limit of {max_bytes}", field=field
        )


def check_fsspec(uri: str, field: str, *, max_bytes: int) -> int | None:
    """s3://, gs:// and hf:// through fsspec (s3 and gs need an optional extra; hf is
    huggingface_hub's file system): the object exists, is a file no larger than ``max_bytes``,
    and starts like data (a columnar file: its footer or schema and first row)."""
    import fsspec

    scheme = urlsplit(uri).scheme
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ValidationFailed(
            f"{scheme}:// needs its fsspec back end (pip install 'iprox-service[{scheme}]'): {exc}",
            field=field,
        ) from None
    try:
        info = fs.info(path)
        if info.get("type") != "file":
            raise ValidationFailed(f"{uri!r} is not a file", field=field)
        size = info.get("size")
        if size is not None and size > max_bytes:
            raise ValidationFailed(
                f"{uri!r} is {size} bytes, over the limit of {max_bytes}", field=field
            )
        suffix = Path(path).suffix.lower()
        with fs.open(path, "rb") as fh:
            if suffix in COLUMNAR:
                rows = check_columnar(fh, suffix, uri, field)
                if rows == 0:
                    raise ValidationFailed(f"{uri!r}: the file holds no records", field=field)
                return rows
            _sniff_file(fh, uri, suffix, field, max_bytes, size)
            return None
    except FileNotFoundError:
        raise ValidationFailed(f"{uri!r}: no such object", field=field) from None
    except ValidationFailed:
        raise
    except Exception as exc:  # network or credential errors, whatever the back end raises
        raise ValidationFailed(f"{uri!r} is unreachable ({exc})", field=field) from None


def check_uri(
    uri: str,
    field: str,
    *,
    data_roots: Sequence[Path],
    http_max_bytes: int,
    http_timeout_s: float,
    http_total_timeout_s: float,
    outbound: OutboundPolicy,
) -> int | None:
    """Refuse a dataset URI that cannot be read or does not look like data (422 on ``field``).
    Returns an upper bound on its records when that is cheap to know (a local JSONL file up
    to COUNT_BYTES, a Parquet file's footer, local Arrow files), else None."""
    unfit = unstorable(uri)
    if unfit:
        raise ValidationFailed(f"the URI {unfit}", field=field)
    scheme = urlsplit(uri).scheme
    suffix = Path(urlsplit(uri).path).suffix.lower()
    if scheme == "file":
        return check_local(resolve_file_uri(uri, data_roots, field), uri, field, http_max_bytes)
    if scheme not in REMOTE_SCHEMES:
        raise ValidationFailed(
            f"{uri!r}: unsupported scheme {scheme or '(none)'!r}; use file://, http(s)://, "
            "s3://, gs://, hf://",
            field=field,
        )
    if scheme == "hf" and not HF_URI.match(uri):
        raise ValidationFailed(
            f"{uri!r}: a hub URI is hf://datasets/ORG/NAME[@REVISION]/PATH (a file of a "
            "dataset repository)",
            field=field,
        )
    if suffix not in SUFFIXES:
        raise ValidationFailed(
            f"{uri!r}: unknown file type {suffix!r}; {_SUFFIX_HINT}", field=field
        )
    if scheme in ("http", "https"):
        check_http(
            uri,
            field,
            max_bytes=http_max_bytes,
            timeout_s=http_timeout_s,
            total_s=http_total_timeout_s,
            outbound=outbound,
        )
        return None
    return check_fsspec(uri, field, max_bytes=http_max_bytes)
