"""Tests of the run-directory records."""

import json

import numpy as np
import pytest

from inc_tf import records


def test_metric_tag_pads_index():
  assert records.metric_tag("train", "nc1", 3, "dense_4") == "train/nc1/03_dense_4"


def test_append_and_read_round_trip(tmp_path):
  path = str(tmp_path / "m.jsonl")
  records.append_jsonl(path, {"epoch": np.int64(1), "x": np.float32(0.5),
                              "spectrum": np.array([1.0, 0.5])})
  records.append_jsonl(path, [{"epoch": 2, "x": float("nan")}])
  assert records.read_jsonl(path) == [
      {"epoch": 1, "x": 0.5, "spectrum": [1.0, 0.5]},
      {"epoch": 2, "x": None}]


def test_read_skips_partial_last_line(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"epoch": 1}\n{"epoch": 2, "x": 0.')
  assert records.read_jsonl(str(path)) == [{"epoch": 1}]


def test_read_rejects_corrupt_middle_line(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
  with pytest.raises(ValueError, match="Line 2 of .*m.jsonl is not valid JSON"):
    records.read_jsonl(str(path))


def test_read_missing_file_is_empty(tmp_path):
  assert records.read_jsonl(str(tmp_path / "absent.jsonl")) == []


def test_keep_epochs_up_to_drops_later_records(tmp_path):
  path = tmp_path / "h.jsonl"
  path.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(5))
                  + '{"epoch": 5, "lo')
  dropped = records.keep_epochs_up_to(str(path), 2)
  assert dropped == 2
  assert records.read_jsonl(str(path)) == [{"epoch": 0}, {"epoch": 1},
                                           {"epoch": 2}]
  assert path.read_text().endswith("}\n")


def test_keep_epochs_up_to_leaves_clean_file_untouched(tmp_path):
  path = tmp_path / "h.jsonl"
  path.write_text('{"epoch": 1}\n')
  before = path.stat().st_mtime_ns
  assert records.keep_epochs_up_to(str(path), 3) == 0
  assert path.stat().st_mtime_ns == before
