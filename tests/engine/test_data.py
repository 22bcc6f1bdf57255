"""Record readers and tokenisation: formats, ids, loss masks, truncation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import tiny_tokenizer
from worker.engine.data import (
    IGNORE_INDEX,
    collate,
    encode,
    encode_all,
    load_records,
    record_from_obj,
)
from worker.engine.errors import DataFormatError, EmptyDatasetError, NoResponseTokensError

FORMATS = [
    (
        {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]},
        "A.",
    ),
    ({"prompt": "Q?", "completion": "A."}, "A."),
    ({"instruction": "Do", "input": "this", "output": "Done."}, "Done."),
    ({"instruction": "Do", "context": "ctx", "response": "Done."}, "Done."),
    ({"question": "2+2?", "answer": "4"}, "4"),
    (
        {
            "question": "Where?",
            "context": "Here.",
            "answers": [{"text": "Here", "answer_start": 0}],
        },
        "Here",
    ),
    ({"text": "just text"}, "just text"),
]


@pytest.mark.parametrize(("obj", "response"), FORMATS)
def test_each_format_yields_its_response(obj: dict, response: str) -> None:
    rec = record_from_obj(obj, 3, "f:4")
    assert rec.response == response
    assert rec.id == "3" and rec.fields == obj


def test_id_field_wins_over_index(write_jsonl) -> None:  # type: ignore[no-untyped-def]
    path = write_jsonl([{"id": "a", "text": "x"}, {"text": "y"}])
    assert [r.id for r in load_records(path)] == ["a", "1"]


def test_malformed_line_names_the_line(write_jsonl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": \n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:3: not valid JSON"):
        load_records(path)


def test_unknown_format_names_record_and_keys(write_jsonl) -> None:  # type: ignore[no-untyped-def]
    path = write_jsonl([{"text": "ok"}, {"foo": 1}])
    with pytest.raises(DataFormatError, match=r"data.jsonl:2: unknown record format \(keys: foo\)"):
        load_records(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(EmptyDatasetError):
        load_records(tmp_path / "e.jsonl")


def test_json_list_and_mmlu_csv(tmp_path: Path) -> None:
    (tmp_path / "l.json").write_text(json.dumps([{"prompt": "a", "completion": "b"}]))
    assert load_records(tmp_path / "l.json")[0].response == "b"
    d = tmp_path / "mmlu"
    d.mkdir()
    (d / "anatomy_dev.csv").write_text('"What, exactly?",w,x,y,z,C\n')
    rec = load_records(d)[0]
    assert rec.source == "anatomy" and rec.response == "C. y" and "D. z" in rec.prompt[0]["content"]


def test_less_target_files(shared_data: Path) -> None:
    tydi = load_records(shared_data / "less-targets" / "tydiqa-one-shot.json")
    assert len(tydi) == 9 and tydi[0].id.startswith("finnish")
    bbh = load_records(shared_data / "less-targets" / "bbh-three-shot.json")
    assert len(bbh) == 81 and all(r.response for r in bbh)
    assert bbh[0].prompt[0]["content"].endswith("A:")


def test_loss_covers_response_only() -> None:
    tok = tiny_tokenizer()
    ex = encode(record_from_obj({"prompt": "Question", "completion": "Yes"}, 0, "x"), tok, 128)
    loss_ids = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(loss_ids) == "Yes<|im_end|>\n"
    plain = encode(record_from_obj({"text": "abc"}, 0, "x"), tok, 128)
    assert plain.n_loss_tokens == len(plain.input_ids)


def test_truncation_keeps_response_and_prompt_tail() -> None:
    tok = tiny_tokenizer()
    rec = record_from_obj({"prompt": "p" * 100 + "END", "completion": "r" * 100}, 0, "x")
    ex = encode(rec, tok, 64)
    assert ex.truncated and len(ex.input_ids) == 64
    assert ex.n_loss_tokens == 64 - 32  # the response keeps at least half the budget
    assert "END" in tok.decode(ex.input_ids[:32])


def test_no_response_tokens_is_named() -> None:
    tok = tiny_tokenizer()
    rec = record_from_obj({"id": "r7", "prompt": "p", "completion": ""}, 7, "x")
    with pytest.raises(NoResponseTokensError, match="record 7 \\(id 'r7'\\)"):
        encode(rec, tok, 16)
    kept = encode_all([rec, record_from_obj({"text": "t"}, 8, "x")], tok, 16, on_empty="skip")
    assert [e.index for e in kept] == [8]


def test_collate_pads_right_and_masks() -> None:
    tok = tiny_tokenizer()
    exs = encode_all(
        [record_from_obj({"text": t}, i, "x") for i, t in enumerate(["a", "abcd"])], tok, 16
    )
    b = collate(exs, pad_id=tok.pad_token_id)
    assert b["input_ids"].shape == (2, 5)
    assert b["attention_mask"][0].tolist() == [1, 1, 0, 0, 0]
    assert b["labels"][0, 2:].tolist() == [IGNORE_INDEX] * 3
