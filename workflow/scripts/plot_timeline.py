"""Draw a run's pipeline timeline (the command line of fmnist.report.timeline_figure).

Reads results/runs/{run}/timeline.csv (format: workflow/schemas/timeline.schema.yaml) and
the run's run.json, and writes the figure (one lane per stage, forward and backward boxes
per micro-batch, the measured idle fraction beside the GPipe formula) as PNG and PDF.
Prints the idle fractions. Output bytes are deterministic.

Must not import torch.
"""

from __future__ import annotations

import argparse
import sys

from fmnist.report.timeline_figure import plot_timeline
from fmnist.rundir.runfiles import RunFileError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="plot_timeline.py",
        description="Draw the pipeline timeline of one training run and measure its idle "
        "fraction against the GPipe bubble formula (K-1)/(M+K-1).",
    )
    parser.add_argument("--timeline", required=True, help="the run's timeline.csv")
    parser.add_argument("--run-json", required=True, help="the run's run.json")
    parser.add_argument("--png", required=True, help="the figure as PNG (300 dpi)")
    parser.add_argument("--pdf", required=True, help="the figure as PDF (vector)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        idle = plot_timeline(args.timeline, args.run_json, args.png, args.pdf)
    except (OSError, RunFileError) as err:
        # The reader's messages name the file, row and column (or key) at fault.
        print(f"plot_timeline.py: error: {err}", file=sys.stderr)
        return 1
    per_stage = ", ".join(f"stage {s} {v:.4f}" for s, v in enumerate(idle.per_stage))
    print(
        f"{args.timeline}: K = {idle.stages}, M = {idle.microbatches}, {len(idle.per_step)} "
        f"steps: measured idle fraction {idle.fraction:.4f} ({per_stage}); "
        f"GPipe formula {idle.gpipe:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
