"""The final-epoch table of headline collapse numbers, one row per probe point.

Both the training command and the `report` command print it at their end.
"""

# (metric, split) per column, after the index and layer columns.
COLUMNS = (
    ("within_fraction", "train"),
    ("nc1", "train"),
    ("cdnv", "train"),
    ("equinorm", "train"),
    ("max_angle", "train"),
    ("alignment", "train"),
    ("ncc_agreement", "train"),
    ("ncc_accuracy", "test"),
    ("feature_stable_rank", "train"),
)


def _format_value(value):
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return "-"
  return "%.3g" % value


def _header(key, split):
  return key if split == "train" else "%s (%s)" % (key, split)


def _onset_line(run, epoch):
  """Describe the collapse onset of `epoch` on the training split."""
  onset, epsilon = run.onset(epoch, "train")
  if not run.onset_known(epoch, "train"):
    return ("Collapse onset at epoch %d unknown: the measurement of this "
            "epoch is incomplete (epsilon = %g)." % (epoch, epsilon))
  if onset is None:
    indices, fractions = run.series("within_fraction", epoch, "train")
    last = ("%.3g" % fractions[-1]) if indices else "not measured"
    return ("No collapse onset at epoch %d (epsilon = %g): within_fraction "
            "at the last probe point is %s." % (epoch, epsilon, last))
  collapsed = [i for i in run.indices() if i >= onset]
  return ("Collapse onset at epoch %d (epsilon = %g): probe point %d (%s); "
          "%d of %d probe points collapsed." %
          (epoch, epsilon, onset, run.layer_names().get(onset, "?"),
           len(collapsed), len(run.indices())))


def format_final_table(run):
  """Format the final epoch's headline numbers as a fixed-width text table.

  The table has one row per probe point with its index, layer and the
  metrics of `COLUMNS`, then a line with the collapse onset. Values are from
  the training split unless the header names another split. A "-" marks a
  metric that is null or was not measured.

  Args:
    run: A `rundir.Run`.

  Returns:
    The table as a string of lines joined by newlines, without a final
    newline.
  """
  epoch = run.final_epoch("train")
  if epoch is None:
    return "No training-split measurement in %s." % run.workdir

  names = run.layer_names()
  header = ["index", "layer"] + [_header(k, s) for k, s in COLUMNS]
  rows = []
  for index in run.indices():
    row = [str(index), names[index]]
    for key, split in COLUMNS:
      record = run.record(index, epoch, split) or {}
      row.append(_format_value(record.get(key)))
    rows.append(row)

  widths = [max(len(row[c]) for row in [header] + rows)
            for c in range(len(header))]

  def format_row(row):
    # The layer name is left-aligned, numbers right-aligned.
    cells = [cell.ljust(width) if column == 1 else cell.rjust(width)
             for column, (cell, width) in enumerate(zip(row, widths))]
    return "  ".join(cells).rstrip()

  lines = ["Final epoch %d: %s" % (epoch, run.title()), format_row(header)]
  lines.append("  ".join("-" * width for width in widths))
  lines.extend(format_row(row) for row in rows)
  lines.append(_onset_line(run, epoch))
  return "\n".join(lines)

