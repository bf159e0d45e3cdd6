"""Files of the run directory: JSON lines and TensorBoard tag names.

Every metric keeps one name, used unchanged as the JSON key, in the
TensorBoard tag (built by `metric_tag`) and in figure labels.
"""

import json
import math
import os
import tempfile

from absl import logging
import numpy as np


def metric_tag(split, metric, index, layer):
  """Return the TensorBoard tag of one metric at one probe point.

  Args:
    split: "train" or "test".
    metric: A key of `inc_tf.metrics.METRIC_KEYS`.
    index: Probe point index (0 is the network input).
    layer: Name of the layer that consumes the probed features.

  Returns:
    A tag such as "train/within_fraction/03_dense_3"; the zero-padded index
    keeps TensorBoard's alphabetical order equal to the network's order.
  """
  return f"{split}/{metric}/{index:02d}_{layer}"


def to_json_value(value):
  """Convert NumPy scalars and arrays to JSON values; NaN and inf become None."""
  if isinstance(value, dict):
    return {k: to_json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [to_json_value(v) for v in value]
  if isinstance(value, (np.bool_, bool)):
    return bool(value)
  if isinstance(value, (np.integer, int)):
    return int(value)
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else None
  return value


def append_jsonl(path, records):
  """Append records to a JSON-lines file, one object per line, and flush.

  Args:
    path: File path; created if missing.
    records: A dict or a list of dicts.
  """
  if isinstance(records, dict):
    records = [records]
  lines = "".join(
      json.dumps(to_json_value(r), allow_nan=False) + "\n" for r in records)
  with open(path, "a", encoding="utf-8") as f:
    f.write(lines)
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path):
  """Read a JSON-lines file, skipping a partial last line.

  A run killed in the middle of a write can leave a last line without its
  newline; that line is dropped with a warning. A malformed line elsewhere
  is an error because it means the file was edited or corrupted.

  Args:
    path: File path.

  Returns:
    A list of dicts, or an empty list when the file does not exist.

  Raises:
    ValueError: A complete line is not a JSON object.
  """
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    text = f.read()
  lines = text.split("\n")
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    is_last = number == len(lines)
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if is_last:
        logging.warning("Skipping the partial last line %d of %s.", number, path)
        continue
      raise ValueError(
          f"Line {number} of {path} is not valid JSON ({e}); restore the "
          "file or delete the line.") from e
    if not isinstance(record, dict):
      raise ValueError(f"Line {number} of {path} is not a JSON object.")
    records.append(record)
  return records


def write_text_atomic(path, text):
  """Write `text` to `path` through a temporary file in the same folder.

  `os.replace` swaps the file in one step, so a reader or an interruption
  sees either the old or the new contents, never half of them.
  """
  directory = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile(
      "w", encoding="utf-8", dir=directory, delete=False,
      prefix=".tmp_") as f:
    f.write(text)
  os.replace(f.name, path)


def keep_epochs_up_to(path, last_epoch):
  """Rewrite a JSON-lines file keeping only records with `epoch <= last_epoch`.

  Used on resume: records written after the last checkpoint are dropped,
  because the resumed run writes them again. The file is replaced
  atomically, so an interruption here leaves the old file intact.

  Args:
    path: File path; nothing happens when it does not exist.
    last_epoch: Epoch of the restored checkpoint.

  Returns:
    The number of records dropped.
  """
  if not os.path.exists(path):
    return 0
  records = read_jsonl(path)
  kept = [r for r in records if r.get("epoch", -1) <= last_epoch]
  with open(path, encoding="utf-8") as f:
    unchanged = f.read() == "".join(
        json.dumps(r, allow_nan=False) + "\n" for r in kept)
  if unchanged:
    return 0
  write_text_atomic(
      path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
  return len(records) - len(kept)
