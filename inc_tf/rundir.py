"""Read a run directory's measurement files without TensorFlow.

`load_run` reads `metrics.jsonl`, `onset.jsonl`, the optional `history.jsonl`
and the optional `flags.txt` of a finished or interrupted run into a `Run`,
which the figures, the final table and the `report` command share.
"""

import dataclasses
import math
import os
from typing import Dict, List, Optional, Tuple

from absl import logging

from inc_tf import metrics as metrics_lib
from inc_tf import records as records_lib

METRICS_FILE = "metrics.jsonl"
ONSET_FILE = "onset.jsonl"
HISTORY_FILE = "history.jsonl"
FLAGS_FILE = "flags.txt"

# Used only when neither onset.jsonl nor flags.txt records the threshold.
DEFAULT_EPSILON = 0.2

_PRODUCER = "python -m inc_tf.main --workdir=DIR"


def _read_records(path, required_keys):
  """Read a JSON-lines file, keeping the objects that have `required_keys`.

  `records_lib.read_jsonl` skips a partial last line (an interrupted write) with
  a warning and raises ValueError for an invalid line elsewhere.

  Args:
    path: File to read.
    required_keys: Keys every record must have; records without them are
      skipped with a warning.

  Returns:
    The records in file order, as a list of dicts.
  """
  kept = []
  for number, record in enumerate(records_lib.read_jsonl(path), start=1):
    missing = [k for k in required_keys if k not in record]
    if missing:
      logging.warning("Skipped record %d of %s because it has no %s: %.200r",
                      number, path, missing, record)
      continue
    kept.append(record)
  return kept


def _read_flags(path):
  """Read `--name=value` lines of an absl flagfile into a dict of strings.

  Boolean flags written as `--name` or `--noname` become "true" or "false".
  Comment lines (starting with `#` or `//`) and blank lines are ignored.
  """
  values = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line.startswith("--"):
        continue
      name, has_value, value = line[2:].partition("=")
      if has_value:
        values[name] = value
      elif name.startswith("no"):
        values[name[2:]] = "false"
      else:
        values[name] = "true"
  return values


@dataclasses.dataclass(frozen=True)
class Run:
  """Measurements of one run directory.

  Attributes:
    workdir: The run directory.
    records: Dict from `(split, epoch, index)` to that probe point's metric
      record as written to `metrics.jsonl` (the last one where a key repeats).
    onsets: Dict from `(split, epoch)` to `(onset, epsilon)`; onset is a probe
      index or None.
    history: Per-epoch training records from `history.jsonl` sorted by epoch
      (the last one where an epoch repeats), or None when the file is missing.
    flags: Flag values from `flags.txt` as strings; empty when it is missing.
  """

  workdir: str
  records: Dict[Tuple[str, int, int], dict]
  onsets: Dict[Tuple[str, int], Tuple[Optional[int], float]]
  history: Optional[List[dict]]
  flags: Dict[str, str]

  @property
  def name(self):
    """The run directory's base name."""
    return os.path.basename(os.path.normpath(self.workdir))

  def epochs(self, split="train"):
    """Return the sorted measured epochs of `split`."""
    return sorted({e for s, e, _ in self.records if s == split})

  def final_epoch(self, split="train"):
    """Return the last measured epoch of `split`, or None if there is none."""
    epochs = self.epochs(split)
    return epochs[-1] if epochs else None

  def indices(self):
    """Return the sorted probe indices measured at any epoch and split."""
    return sorted({i for _, _, i in self.records})

  def layer_names(self):
    """Return a dict from probe index to the name of the layer consuming it."""
    names = {}
    for (_, _, index), record in sorted(self.records.items()):
      names[index] = str(record.get("layer", index))
    return names

  def record(self, index, epoch, split="train"):
    """Return the metric record of one probe point, or None if not measured."""
    return self.records.get((split, epoch, index))

  def series(self, key, epoch, split="train"):
    """Return one metric along the probe points of one epoch.

    Points where the metric is missing, null or not finite are left out, so
    a metric defined only at some points is not drawn as zero elsewhere.

    Args:
      key: Metric name, a key of `metrics.jsonl` records with a number value.
      epoch: Measured epoch.
      split: "train" or "test".

    Returns:
      `(indices, values)`: two lists of equal length, indices increasing.
    """
    indices, values = [], []
    for (s, e, index), record in sorted(self.records.items()):
      if s != split or e != epoch:
        continue
      value = record.get(key)
      if isinstance(value, (int, float)) and math.isfinite(value):
        indices.append(index)
        values.append(float(value))
    return indices, values

  def epsilon(self):
    """Return the collapse threshold of this run.

    Taken from the latest onset record, else from `--epsilon` in flags.txt,
    else `DEFAULT_EPSILON`.
    """
    if self.onsets:
      return self.onsets[max(self.onsets, key=lambda k: (k[1], k[0]))][1]
    try:
      return float(self.flags["epsilon"])
    except (KeyError, ValueError):
      return DEFAULT_EPSILON

  def complete(self, epoch, split="train"):
    """Return whether every probe point of the run was measured at `epoch`."""
    measured = {i for s, e, i in self.records if s == split and e == epoch}
    return measured == set(self.indices())

  def onset_known(self, epoch=None, split="train"):
    """Return whether `onset` can tell the onset of `epoch`.

    It can when onset.jsonl records the epoch or every probe point was
    measured at it. A run interrupted during a measurement has neither.
    """
    if epoch is None:
      epoch = self.final_epoch(split)
    return (split, epoch) in self.onsets or self.complete(epoch, split)

  def onset(self, epoch=None, split="train"):
    """Return `(onset, epsilon)` of one epoch, by default the final one.

    An epoch measured at every probe point but missing from onset.jsonl (a
    run interrupted between the two writes) gets its onset recomputed from
    `within_fraction`. Where points are missing as well the onset is None,
    and `onset_known` distinguishes this case from a run without collapse.

    Args:
      epoch: Measured epoch, or None for the final epoch of `split`.
      split: "train" or "test".

    Returns:
      The probe index where collapse begins (None if it does not or is not
      known) and the threshold epsilon.
    """
    if epoch is None:
      epoch = self.final_epoch(split)
    if (split, epoch) in self.onsets:
      return self.onsets[(split, epoch)]
    epsilon = self.epsilon()
    if not self.complete(epoch, split):
      return None, epsilon
    indices = self.indices()
    position = metrics_lib.collapse_onset(
        [self.record(i, epoch, split).get("within_fraction")
         for i in indices], epsilon)
    return (None if position is None else indices[position]), epsilon

  def title(self):
    """Return "dataset / architecture / N epochs" for figure titles.

    Uses flags.txt where present, otherwise the run directory's name and the
    last epoch found in the files.
    """
    parts = []
    if "dataset" in self.flags:
      parts.append(self.flags["dataset"])
    model = self.flags.get("model")
    if model in ("mlp", "convnet") and "depth" in self.flags:
      parts.append("%s %sx%s" % (model, self.flags["depth"],
                                 self.flags.get("width", "?")))
    elif model:
      parts.append(model)
    if not parts:
      parts.append(self.name)

    epochs = self.flags.get("epochs")
    if epochs is None:
      last = [self.final_epoch("train") or 0]
      if self.history:
        last.append(self.history[-1]["epoch"])
      epochs = max(last)
    parts.append("%s epochs" % epochs)
    return " / ".join(str(p) for p in parts)


def _keep_last(records, key_fn):
  """Return a dict from `key_fn(record)` to the last record with that key."""
  by_key = {}
  for record in records:
    by_key[key_fn(record)] = record
  return by_key


def load_run(workdir):
  """Read a run directory's measurement files into a `Run`.

  A partial last line (an interrupted write) and records without their key
  fields are skipped with a warning. Where the same `(epoch, split, index)`
  (or epoch, for history) appears more than once the last record wins, as
  after a resumed run.

  Args:
    workdir: Run directory written by the training command.

  Returns:
    A `Run`.

  Raises:
    FileNotFoundError: `workdir`, its metrics.jsonl or its onset.jsonl does
      not exist.
    ValueError: metrics.jsonl has no usable record, or a line before the
      last of a JSON-lines file is invalid.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(
        "Run directory %r does not exist. Train a run first with `%s`, or "
        "pass the directory given to --workdir." % (workdir, _PRODUCER))
  metrics_path = os.path.join(workdir, METRICS_FILE)
  onset_path = os.path.join(workdir, ONSET_FILE)
  for path in (metrics_path, onset_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(
          "%s not found. It is written by the training command (`%s`) after "
          "the first measured epoch." % (path, _PRODUCER))

  metrics = _read_records(metrics_path, ("epoch", "split", "index"))
  if not metrics:
    raise ValueError(
        "%s has no measurement record. The run stopped before its first "
        "measurement; resume it with `%s`." % (metrics_path, _PRODUCER))
  records = _keep_last(
      metrics, lambda r: (str(r["split"]), int(r["epoch"]), int(r["index"])))

  onset_records = _read_records(onset_path, ("epoch", "split", "onset"))
  onsets = {}
  for key, record in _keep_last(
      onset_records, lambda r: (str(r["split"]), int(r["epoch"]))).items():
    onset = record["onset"]
    epsilon = float(record.get("epsilon", DEFAULT_EPSILON))
    onsets[key] = (None if onset is None else int(onset), epsilon)

  history = None
  history_path = os.path.join(workdir, HISTORY_FILE)
  if os.path.isfile(history_path):
    by_epoch = _keep_last(_read_records(history_path, ("epoch",)),
                          lambda r: int(r["epoch"]))
    history = [by_epoch[e] for e in sorted(by_epoch)]

  flags_path = os.path.join(workdir, FLAGS_FILE)
  flag_values = _read_flags(flags_path) if os.path.isfile(flags_path) else {}

  return Run(workdir=workdir, records=records, onsets=onsets, history=history,
             flags=flag_values)
