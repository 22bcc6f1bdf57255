"""Reading training, probe and target-task records from the formats users have.

Every reader yields :class:`Record` objects that keep the original fields unchanged, a stable id
(the record's ``id`` field, else its index in the file) and the split into prompt turns and the
response, whose tokens alone carry the loss.

Formats, detected per record by its keys:

* chat: ``messages`` (list of ``{role, content}``); the last ``assistant`` turn is the response.
* ``prompt`` / ``completion``.
* Alpaca / the Dolly subset: ``instruction`` / ``input`` / ``output``; Dolly's own
  ``instruction`` / ``context`` / ``response``.
* GSM8K: ``question`` / ``answer``.
* TyDiQA (LESS target file): ``context`` / ``question`` / ``answers``.
* plain ``text``: no chat template, the loss covers every token.

Files: JSONL, a JSON list, the LESS target JSON files (a dict of task -> list of records, or
task -> few-shot prompt string as in ``bbh-three-shot.json``), MMLU's headerless CSV
(``question,A,B,C,D,answer``), or a directory of MMLU CSV files. Columnar data, read with
pyarrow in batches of rows so that no file is held whole: Parquet (``.parquet``), Arrow IPC in
its file or stream form (``.arrow``, what ``datasets`` writes), a folder written by
``datasets.Dataset.save_to_disk`` (its ``state.json`` lists the Arrow files in order), or a
folder of Parquet files (the Hugging Face hub's ``data/train-0000N-of-0000M.parquet`` layout),
read in name order as one data set. Each row is a record, its columns the fields.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.engine.errors import DataFormatError, EmptyDatasetError

Message = dict[str, str]


@dataclass(frozen=True, eq=False)
class Record:
    """One sample. ``prompt`` are the chat turns before the response (empty for plain text)."""

    index: int
    id: str
    prompt: tuple[Message, ...]
    response: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    plain: bool = False


def _user(text: str) -> tuple[Message, ...]:
    return ({"role": "user", "content": text},) if text else ()


def _join(*parts: str) -> str:
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(
            f"{where}: field '{key}' must be a string, got {type(value).__name__}"
        )
    return value


def _from_messages(obj: Mapping[str, Any], where: str) -> tuple[tuple[Message, ...], str]:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f"{where}: field 'messages' must be a non-empty list")
    turns: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise DataFormatError(f"{where}: messages[{i}] needs a string 'role' and 'content'")
        content = m.get("content")
        if not isinstance(content, str):
            raise DataFormatError(f"{where}: messages[{i}].content must be a string")
        turns.append({"role": m["role"], "content": content})
    last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataFormatError(f"{where}: field 'messages' has no 'assistant' turn to learn from")
    return tuple(turns[:last]), turns[last]["content"]


def record_from_obj(obj: Any, index: int, where: str, source: str | None = None) -> Record:
    """Build a :class:`Record` from one decoded JSON object; ``where`` names it in errors."""
    if not isinstance(obj, Mapping):
        raise DataFormatError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")

    # A null field counts as absent: columnar files give every row every column of the file,
    # null where a record has none (a Parquet pool mixing Alpaca and prompt/completion rows).
    def has(key: str) -> bool:
        return obj.get(key) is not None

    plain = False
    if has("messages"):
        prompt, response = _from_messages(obj, where)
    elif has("prompt") and has("completion"):
        prompt, response = _user(_str(obj, "prompt", where)), _str(obj, "completion", where)
    elif has("instruction") and has("output"):
        text = _join(_str(obj, "instruction", where), _str(obj, "input", where))
        prompt, response = _user(text), _str(obj, "output", where)
    elif has("instruction") and has("response"):
        text = _join(_str(obj, "instruction", where), _str(obj, "context", where))
        prompt, response = _user(text), _str(obj, "response", where)
    elif has("question") and has("answers"):
        answers = obj["answers"]
        first = answers[0] if isinstance(answers, list) and answers else None
        if not isinstance(first, Mapping) or not isinstance(first.get("text"), str):
            raise DataFormatError(f"{where}: field 'answers' must be a list of {{text: ...}}")
        text = _join(_str(obj, "context", where), _str(obj, "question", where))
        prompt, response = _user(text), first["text"]
    elif has("question") and has("answer"):
        prompt, response = _user(_str(obj, "question", where)), _str(obj, "answer", where)
    elif has("text"):
        prompt, response, plain = (), _str(obj, "text", where), True
    else:
        keys = ", ".join(sorted(str(k) for k, v in obj.items() if v is not None)) or "none"
        raise DataFormatError(
            f"{where}: unknown record format (keys: {keys}); expected one of messages, "
            "prompt/completion, instruction/input/output, instruction/context/response, "
            "question/answer, text"
        )
    rid = obj.get("id")
    rid = index if rid is None else rid
    src = obj.get("source")
    src = obj.get("category") if src is None else src
    src = source if src is None else src
    return Record(
        index=index,
        id=str(rid),
        prompt=prompt,
        response=response,
        fields=dict(obj),
        source=str(src) if src is not None else None,
        plain=plain,
    )


_MMLU_LETTERS = ("A", "B", "C", "D")


def _mmlu_record(row: Sequence[str], index: int, where: str, subject: str) -> Record:
    if len(row) != 6 or row[5].strip() not in _MMLU_LETTERS:
        raise DataFormatError(
            f"{where}: an MMLU row needs 6 columns (question,A,B,C,D,answer letter), got {len(row)}"
        )
    question, *options, answer = row
    answer = answer.strip()
    lines = [
        question.strip(),
        *(f"{k}. {o.strip()}" for k, o in zip(_MMLU_LETTERS, options, strict=True)),
    ]
    prompt = "\n".join(lines) + "\nAnswer:"
    chosen = options[_MMLU_LETTERS.index(answer)].strip()
    fields = {"question": question, "choices": list(options), "answer": answer, "subject": subject}
    return Record(
        index=index,
        id=f"{subject}-{index}",
        prompt=_user(prompt),
        response=f"{answer}. {chosen}",
        fields=fields,
        source=subject,
    )


def _mmlu_subject(path: Path) -> str:
    return re.sub(r"_(dev|test|val)$", "", path.stem)


def _iter_mmlu(paths: Sequence[Path], start: int = 0) -> Iterator[Record]:
    index = start
    for path in paths:
        subject = _mmlu_subject(path)
        with path.open(newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh), start=1):
                if not row:
                    continue
                yield _mmlu_record(row, index, f"{path}:{lineno}", subject)
                index += 1


def _bbh_shots(task: str, prompt: str, start: int) -> list[Record]:
    """Split a BBH few-shot prompt into one record per shot (task description kept as prefix)."""
    head, *shots = re.split(r"\n\nQ: ", prompt.strip())
    out = []
    for k, shot in enumerate(shots):
        q, sep, a = shot.partition("\nA:")
        if not sep:
            raise DataFormatError(f"BBH task '{task}' shot {k}: no 'A:' line")
        text = f"{head.strip()}\n\nQ: {q.strip()}\nA:"
        out.append(
            Record(
                index=start + k,
                id=f"{task}-{k}",
                prompt=_user(text),
                response=a.strip(),
                fields={"task": task, "shot": k, "prompt": prompt},
                source=task,
            )
        )
    return out


def _iter_json_document(path: Path, doc: Any) -> Iterator[Record]:
    where = str(path)
    if isinstance(doc, list):
        for i, obj in enumerate(doc):
            yield record_from_obj(obj, i, f"{where}: record {i}")
    elif isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        index = 0  # LESS-style dict of task -> records (tydiqa-one-shot.json)
        for task, items in doc.items():
            for obj in items:
                yield record_from_obj(obj, index, f"{where}: {task}[{index}]", source=str(task))
                index += 1
    elif isinstance(doc, dict) and doc and all(isinstance(v, str) for v in doc.values()):
        index = 0  # task -> few-shot prompt (bbh-three-shot.json)
        for task, prompt in doc.items():
            shots = _bbh_shots(str(task), prompt, index)
            index += len(shots)
            yield from shots
    elif isinstance(doc, dict):
        yield record_from_obj(doc, 0, f"{where}: record 0")
    else:
        raise DataFormatError(f"{where}: expected a JSON list or object, got {type(doc).__name__}")


def _iter_jsonl(path: Path) -> Iterator[Record]:
    index = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            yield record_from_obj(obj, index, f"{path}:{lineno}")
            index += 1


COLUMNAR_SUFFIXES = (".parquet", ".arrow")
_ROWS_PER_BATCH = 1024


def _arrow_batches(path: Path) -> Iterator[Any]:
    """The record batches of one Parquet or Arrow IPC file (``pyarrow.RecordBatch``), one at a
    time: a Parquet file row group by row group, an Arrow file memory-mapped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            yield from pq.ParquetFile(path).iter_batches(batch_size=_ROWS_PER_BATCH)
            return
        with pa.memory_map(str(path), "r") as source:
            try:
                reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid:  # the stream form (datasets' .arrow files)
                source.seek(0)
                yield from pa.ipc.open_stream(source)
                return
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
    except (pa.ArrowException, OSError) as exc:
        raise DataFormatError(f"{path}: not a readable {path.suffix} file ({exc})") from None


def columnar_files(folder: Path) -> list[Path]:
    """The data files of a folder in reading order: a ``save_to_disk`` folder's Arrow files as
    its ``state.json`` lists them, else the folder's Parquet files by name; [] if neither."""
    state = folder / "state.json"
    if state.is_file():
        try:
            files = [folder / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataFormatError(
                f"{state}: not a datasets save_to_disk state file ({exc})"
            ) from None
        if any(f.parent != folder for f in files):
            raise DataFormatError(f"{state}: data files must lie in the folder itself")
        return files
    if (folder / "dataset_dict.json").is_file():
        raise DataFormatError(
            f"{folder}: a DatasetDict folder; give one split's folder (e.g. {folder / 'train'})"
        )
    return sorted(folder.glob("*.parquet"))


def _iter_columnar(paths: Sequence[Path]) -> Iterator[Record]:
    index = 0
    for path in paths:
        for batch in _arrow_batches(path):
            for obj in batch.to_pylist():
                yield record_from_obj(obj, index, f"{path}: row {index}")
                index += 1


def iter_records(path: str | Path) -> Iterator[Record]:
    """Stream records from ``path`` (JSONL lines one at a time, columnar files by batch)."""
    p = Path(path)
    if not p.exists():
        raise DataFormatError(f"{p}: no such file or directory")
    if p.is_dir():
        columnar = columnar_files(p)
        if columnar:
            yield from _iter_columnar(columnar)
            return
        csvs = sorted(p.glob("*.csv"))
        if not csvs:
            raise DataFormatError(
                f"{p}: a directory must be a datasets save_to_disk folder, or hold .parquet "
                "files or MMLU-style .csv files"
            )
        yield from _iter_mmlu(csvs)
        return
    suffix = p.suffix.lower()
    if suffix == ".csv":
        yield from _iter_mmlu([p])
    elif suffix in COLUMNAR_SUFFIXES:
        yield from _iter_columnar([p])
    elif suffix == ".jsonl":
        yield from _iter_jsonl(p)
    elif suffix == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        yield from _iter_json_document(p, doc)
    else:
        raise DataFormatError(
            f"{p}: unknown file type '{suffix}'; use .jsonl, .json, .csv, .parquet or .arrow"
        )


def load_records(path: str | Path) -> list[Record]:
    """All records of ``path``; raises :class:`EmptyDatasetError` when there are none."""
    records = list(iter_records(path))
    if not records:
        raise EmptyDatasetError(f"{path}: holds no records")
    return records
