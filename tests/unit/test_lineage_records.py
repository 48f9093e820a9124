"""Lineage records: DVC tags round-trip, plain files get path and digest, a broken DVC repository never
fails a fine-tune's registration, and ids that would break a trace filter are refused before any search."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.lineage import LineageError
from llmops.lineage.dvc import DvcDataset
from llmops.lineage.record import dataset_lineage_tags

ROW = '{"country": "France", "capital": "Paris"}\n'


def _fingerprint(path: Path) -> dict:
    from llmops.registry.digest import file_digest

    return {"train": {"file": str(path), "file_digest": file_digest(path), "rows": 1}, "eval": None}


def test_dvc_record_round_trips_through_tags_and_partial_tags_read_as_untracked():
    record = DvcDataset("/repo", "data/t.jsonl", "0717", "0717", "data/t.jsonl.dvc", "storage /r", "abc123")
    tags = record.tags("llmops.data.train")
    assert tags["llmops.data.train.dvc.pointer"] == "data/t.jsonl.dvc"
    assert DvcDataset.from_tags(tags, "llmops.data.train") == record
    del tags["llmops.data.train.dvc.md5"]
    assert DvcDataset.from_tags(tags, "llmops.data.train") is None
    uncommitted = DvcDataset("/repo", "t.jsonl", "1", "1", "t.jsonl.dvc")
    assert DvcDataset.from_tags(uncommitted.tags("p"), "p") == uncommitted  # rev and remote may be absent


def test_a_plain_file_records_path_digest_and_rows_only(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(ROW)
    tags = dataset_lineage_tags(_fingerprint(data))
    assert tags == {"llmops.data.train.path": str(data), "llmops.data.train.digest": _fingerprint(data)["train"]["file_digest"],
                    "llmops.data.train.rows": "1"}


def test_a_broken_dvc_repository_is_logged_not_raised(tmp_path, caplog):
    pytest.importorskip("dvc")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core\nthis is not ini")
    data = tmp_path / "train.jsonl"
    data.write_text(ROW)
    tags = dataset_lineage_tags(_fingerprint(data))
    assert tags["llmops.data.train.path"] == str(data) and not any(".dvc." in k for k in tags)
    assert "could not read the DVC record" in caplog.text


@pytest.mark.parametrize("kwargs", [{"request_id": "x' OR '1'='1"}, {"request_id": ""}, {"trace_id": "tr-1 OR 1"},
                                    {"request_id": "a" * 129}])
def test_ids_that_would_break_the_trace_filter_are_refused(kwargs):
    from llmops.lineage.runs import find_trace

    with pytest.raises(LineageError, match="invalid"):
        find_trace(**kwargs)
