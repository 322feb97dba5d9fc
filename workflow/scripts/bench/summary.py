"""The benchmarks' tables (Markdown) and figures, made from the JSON they write: what
results/benchmark/ and workflow/scripts/bench/RESULTS.md show, never typed by hand.
Imports no torch."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def step_markdown(report: dict) -> str:
    """benchmark.py's report: samples/s per variant and thread count, ratios to the tutorial."""
    s, env = report["settings"], report["environment"]
    lines = [
        "### The training step (benchmark.py)",
        "",
        f"`{' '.join(report['command'])}` on {env['cpu']} ({env['cpus_available']} CPUs), "
        f"devices {', '.join(env['devices'])}, torch {env['torch']}; batch {s['batch_size']}, "
        f"{s['train_samples']:,} samples, {s['repetitions']} interleaved rounds. "
        "Samples/s best / median of the rounds; × = median of per-round ratios to (a).",
        "",
        "| variant | " + " | ".join(f"{t} thread(s)" for t in report["threads"]) + " |",
        "| --- |" + " --- |" * len(report["threads"]),
    ]
    first = next(iter(report["threads"].values()))["variants"]
    for key, entry in first.items():
        cells = []
        for block in report["threads"].values():
            e = block["variants"][key]
            sps, ratio = e["samples_per_second"], e["ratio_to_tutorial"]["median_of_rounds"]
            cells.append(f"{_rate(sps['best'])} / {_rate(sps['median'])} ({ratio:.2f}×)")
        lines.append(f"| ({entry['group']}) {entry['label']} | " + " | ".join(cells) + " |")
    peaks = ", ".join(
        f"{t} thread(s) {b['sgemm_gflops']['best']:.0f}" for t, b in report["threads"].items()
    )
    lines += ["", f"Machine matmul peak ({s['sgemm_size']}³ sgemm), GFLOP/s: {peaks}.", ""]
    return "\n".join(lines)


def pipeline_markdown(report: dict) -> str:
    """benchmark_pipeline.py's report: each model's variants, speedups, idle fractions."""
    s, env = report["settings"], report["environment"]
    lines = [
        "### The distributed engine (benchmark_pipeline.py)",
        "",
        f"`{' '.join(report['command'])}` on {env['cpu']} ({env['cpus_available']} CPUs), "
        f"torch {env['torch']}; {s['stages']} stages, 1 thread per process, batch "
        f"{s['batch_size']}, {s['train_samples']:,} samples, {s['repetitions']} rounds. "
        "× same M: against single-process autograd with the same micro-batches (the same "
        "numbers); × fastest: against the model's fastest single-process run; idle: measured, "
        "stage clocks aligned, beside GPipe's (K−1)/(M+K−1).",
        "",
        "| model | variant | samples/s (median) | × same M | × fastest | idle / formula |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in report["variants"].values():
        same = e["speedup_vs_same_microbatches"]
        timeline = e["timeline"]
        idle = f"{timeline['idle_fraction']:.2f}"
        if e["engine"] == "distributed":
            idle += f" / {timeline['gpipe_formula']:.2f}"
        same_text = f"{same['median_of_rounds']:.2f}" if same else "–"
        fastest = e["speedup_vs_fastest_single"]["median_of_rounds"]
        sps = _rate(e["samples_per_second"]["median"])
        lines.append(
            f"| {e['model']} | {e['variant']} | {sps} | {same_text} | {fastest:.2f} | {idle} |"
        )
    identical = "yes" if report["identity"]["identical"] else "NO"
    lines += ["", f"Numbers identical, single-process against distributed: {identical}."]
    for model, verdicts in report["goal"]["models"].items():
        best = verdicts.get("fastest_single", {}).get("any")
        if best:
            met = "met" if best["met"] else "not met"
            lines.append(
                f"Goal ≥ {report['goal']['goal']}× the fastest single-process run, model "
                f"{model}: {best['best_variant']} {best['speedup']:.2f}× ({met})."
            )
    return "\n".join(lines) + "\n"


def step_figure(report: dict, path: Path) -> None:
    """Samples/s of every variant (median of the rounds), one bar group per thread count."""
    threads = list(report["threads"])
    variants = list(next(iter(report["threads"].values()))["variants"].values())
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(variants) + 1.2))
    height = 0.8 / len(threads)
    for i, t in enumerate(threads):
        values = [
            e["samples_per_second"]["median"] for e in report["threads"][t]["variants"].values()
        ]
        ys = [y + i * height for y in range(len(variants))]
        ax.barh(ys, values, height=height, label=f"{t} thread(s)")
    ax.set_yticks([y + 0.4 - height / 2 for y in range(len(variants))])
    ax.set_yticklabels([f"({e['group']}) {e['label']}" for e in variants], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("samples/s (median of rounds)")
    ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pipeline_figure(report: dict, path: Path) -> None:
    """Each variant's speedup over its model's fastest single-process run."""
    entries = list(report["variants"].values())
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(entries) + 1.2))
    ax.barh(
        range(len(entries)),
        [e["speedup_vs_fastest_single"]["median_of_rounds"] for e in entries],
        color=["C1" if e["engine"] == "distributed" else "C0" for e in entries],
    )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvline(report["goal"]["goal"], color="C3", linestyle="--", linewidth=0.8, label="goal")
    ax.set_yticks(range(len(entries)))
    ax.set_yticklabels([f"{e['model']}: {e['variant']}" for e in entries], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("× the model's fastest single-process run (median of per-round ratios)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
