#!/usr/bin/env python3
"""Tables and figures of the benchmarks, from the JSON they wrote (the command line of
bench.summary): a Markdown file with both tables, and a figure per benchmark.

    python workflow/scripts/benchmark_summary.py --step results/benchmark/step.json \
        --pipeline results/benchmark/pipeline.json --markdown results/benchmark/tables.md \
        --step-figure results/benchmark/step.png --pipeline-figure results/benchmark/pipeline.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.summary import pipeline_figure, pipeline_markdown, step_figure, step_markdown


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=Path, help="benchmark.py's JSON")
    parser.add_argument("--pipeline", type=Path, help="benchmark_pipeline.py's JSON")
    parser.add_argument("--markdown", type=Path, required=True, help="the tables, Markdown")
    parser.add_argument("--step-figure", type=Path, help="PNG or PDF of the step benchmark")
    parser.add_argument("--pipeline-figure", type=Path, help="PNG or PDF of the pipeline one")
    args = parser.parse_args(argv)
    if args.step is None and args.pipeline is None:
        parser.error("give --step, --pipeline or both")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    parts = []
    try:
        if args.step:
            step = json.loads(args.step.read_text())
            parts.append(step_markdown(step))
            if args.step_figure:
                step_figure(step, args.step_figure)
        if args.pipeline:
            pipeline = json.loads(args.pipeline.read_text())
            parts.append(pipeline_markdown(pipeline))
            if args.pipeline_figure:
                pipeline_figure(pipeline, args.pipeline_figure)
    except (OSError, ValueError, KeyError) as err:
        print(f"benchmark_summary.py: error: {err}", file=sys.stderr)
        return 1
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
