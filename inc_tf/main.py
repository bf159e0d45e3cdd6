"""Train a classifier and measure intermediate neural collapse.

Usage:
  python -m inc_tf.main --flagfile=configs/demo_fashion_mnist_mlp.cfg

Flags after --flagfile override the flagfile's values. The run directory
(--workdir) receives flags.txt, history.jsonl, metrics.jsonl, onset.jsonl,
tensorboard/, checkpoints/ and figures/; running the same command again
resumes an interrupted run.
"""

import sys

from absl import app

from inc_tf import flags as flags_lib

flags_lib.define_flags()


def main(argv):
  # User errors end in one "Error: ..." line on stderr and exit status 1
  # (`sys.exit` with a string), without a traceback, absl's log prefix or
  # the module docstring that `app.UsageError` would print.
  if len(argv) > 1:
    sys.exit(f"Error: unexpected arguments {' '.join(argv[1:])!r}. Pass "
             "settings as --name=value flags; see --help.")
  try:
    config = flags_lib.config_from_flags(sys.argv)
  except ValueError as e:
    sys.exit(f"Error: {e}")

  # Imported after flag parsing so that --help does not start TensorFlow.
  from inc_tf import train  # pylint: disable=g-import-not-at-top
  from inc_tf import plots  # pylint: disable=g-import-not-at-top

  try:
    result = train.run(config, flags_text=flags_lib.flags_text(config))
  except (ValueError, FileNotFoundError, train.NonFiniteLossError) as e:
    sys.exit(f"Error: {e}")
  except KeyboardInterrupt:
    print(f"Interrupted. Rerun the same command to resume from the last "
          f"checkpoint in {config.workdir}.", file=sys.stderr)
    return 130

  paths = plots.finish_run(result.workdir)
  print(plots.format_final_table(plots.load_run(result.workdir)))
  print("Figures:\n" + "\n".join(f"  {p}" for p in paths))
  return 0


if __name__ == "__main__":
  app.run(main)
