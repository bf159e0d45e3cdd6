r"""Redraw the figures of a finished or interrupted run and print its table.

Works from the run directory's JSON lines alone and does not import
TensorFlow, so it runs while training continues or on another machine.

  python -m inc_tf.report --workdir=runs/mlp_fashion
  python -m inc_tf.report --compare=runs/mlp_fashion,runs/convnet_fashion \
      --out_dir=figures/mlp_vs_convnet

The first form writes `<workdir>/figures/<family>.png` and `.pdf` and prints
their paths and the final-epoch table. `--compare` draws the runs side by
side, one column each, under `--out_dir` (by default
`<first run>/figures/compare/`) and prints each run's table.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from inc_tf import plots
from inc_tf import rundir
from inc_tf import table

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
  """Define the report command's flags on `flag_values`."""
  flags.DEFINE_string(
      "workdir", None,
      "Run directory to redraw: the --workdir of a training run, containing "
      "metrics.jsonl and onset.jsonl.", flag_values=flag_values)
  flags.DEFINE_list(
      "compare", [],
      "Comma-separated run directories to draw side by side, one column "
      "each, in this order. Replaces --workdir.", flag_values=flag_values)
  flags.DEFINE_string(
      "out_dir", None,
      "Folder for the figures. Defaults to <workdir>/figures, or to "
      "<first --compare run>/figures/compare.", flag_values=flag_values)
  flags.DEFINE_list(
      "families", list(plots.FAMILIES),
      "Figure families to draw, comma-separated, from %s." %
      ", ".join(plots.FAMILIES), flag_values=flag_values)
  flags.register_validator(
      "families", lambda names: set(names) <= set(plots.FAMILIES),
      message="--families takes names from %s." % ", ".join(plots.FAMILIES),
      flag_values=flag_values)


class RunDirectoryError(Exception):
  """A run directory is missing or contains no measurement record.

  `main` prints the message and exits with status 1, without a traceback,
  because the cause is a wrong path or an unfinished run, not a bug.
  """


def _load(workdir):
  try:
    return rundir.load_run(workdir)
  except (FileNotFoundError, ValueError) as e:
    raise RunDirectoryError(str(e)) from e


def report(workdir=None, compare=(), out_dir=None, families=plots.FAMILIES):
  """Redraw the figures of one run, or of several side by side.

  Args:
    workdir: Run directory to redraw, or None when `compare` is given.
    compare: Run directories to draw side by side; at least two.
    out_dir: Folder for the figures, or None for the default (see module
      docstring).
    families: Figure families to draw, names from `plots.FAMILIES`.

  Returns:
    The text to print: the paths written, one per line, then the final table
    of each run.

  Raises:
    app.UsageError: Neither or both of `workdir` and `compare` were given,
      or `compare` names fewer than two runs.
    RunDirectoryError: A run directory is missing or has no measurement.
  """
  if bool(workdir) == bool(compare):
    raise app.UsageError(
        "Pass exactly one of --workdir=DIR or --compare=DIR1,DIR2; got "
        "--workdir=%r and --compare=%r." % (workdir, ",".join(compare)))
  if compare and len(compare) < 2:
    raise app.UsageError(
        "--compare needs at least two run directories, got %r. Use "
        "--workdir for a single run." % ",".join(compare))

  runs = [_load(w) for w in (compare or [workdir])]
  if compare:
    out_dir = out_dir or os.path.join(compare[0], "figures", "compare")
    figs = plots.compare_figures(runs, families)
  else:
    out_dir = out_dir or os.path.join(workdir, "figures")
    figs = plots.figures(runs[0], families)
  paths = plots.save_figures(figs, out_dir)

  sections = ["\n".join(paths)]
  sections.extend(table.format_final_table(run) for run in runs)
  return "\n\n".join(sections)


def main(argv):
  # User errors end in one "Error: ..." line on stderr and exit status 1,
  # because absl would print the module docstring before an app.UsageError.
  if len(argv) > 1:
    sys.exit("Error: unexpected arguments %r. Pass run directories with "
             "--workdir or --compare." % " ".join(argv[1:]))
  logging.info("Redrawing figures from %s", FLAGS.workdir or FLAGS.compare)
  try:
    text = report(FLAGS.workdir, FLAGS.compare, FLAGS.out_dir, FLAGS.families)
  except (RunDirectoryError, app.UsageError) as e:
    sys.exit("Error: %s" % e)
  print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
