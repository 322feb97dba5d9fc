"""benchmark_pipeline.py's printed table, from its report (the JSON it writes).

One block per model: throughput and speedups, then the pipeline figures of timeline.csv;
after them, what each column means, the identity check and the goal's verdicts. Imports
no torch.
"""

from __future__ import annotations


def quiet_line(busy: dict) -> str:
    if busy["median"] is None:
        return "other processes' CPU use: unknown (no /proc/stat)"
    verdict = "quiet" if busy["quiet"] else "NOT QUIET: the figures are disturbed"
    return (
        f"other processes' CPU use before each run: median {100 * busy['median']:.0f}%, "
        f"max {100 * busy['max']:.0f}% of the CPUs ({verdict})"
    )


def share(values: list[float]) -> str:
    return " | ".join(f"{100 * v:.0f}%" for v in values)


def _header(report: dict) -> list[str]:
    s, env, check = report["settings"], report["environment"], report["machine_check"]
    return [
        f"machine: {env['cpu']}, {env['cpus_available']} CPUs available, torch {env['torch']}; "
        f"load average {report['load_average']['start'][0]:.2f} at start, "
        f"{report['load_average']['end'][0]:.2f} at end",
        quiet_line(report["others_busy"]),
        f"machine check: {check['what']}: "
        f"{check['alone_gflops']['median']:.0f} GFLOP/s alone, "
        f"{check['together_gflops']['median']:.0f} together "
        f"({check['scaling']['median']:.2f}x; medians of the rounds)",
        f"{s['train_samples']} training samples, batch {s['batch_size']}, {s['epochs']} epochs "
        f"({s['warmup_epochs']} warm-up excluded), {s['repetitions']} interleaved rounds, "
        f"1 thread per process, {s['stages']} stages on the CPU, activation {s['activation']}",
        "samples/s: best and median of the rounds; x same-M: median of per-round ratios to "
        "single autograd with the same M (same numbers); x fastest: to the model's fastest "
        "single-process variant (median/median, median of per-round ratios)",
    ]


def _throughput(model: str, info: dict, entries: list[dict]) -> list[str]:
    lines = [
        "",
        f"model {model}: layers per stage {info['stage_split']}, boundary width "
        f"{info['boundary_width']}; FLOPs per stage: forward {share(info['forward_share'])}, "
        f"training {share(info['training_share'])} "
        f"({sum(info['training_flops_per_stage']):,} training FLOPs/sample)",
        f"  {'variant':24s} {'best':>8s} {'median':>8s} {'x same-M':>8s} "
        f"{'x fastest':>15s} {'run s':>6s}",
    ]
    for e in entries:
        sps, fast = e["samples_per_second"], e["speedup_vs_fastest_single"]
        same = e["speedup_vs_same_microbatches"]
        same_text = f"{same['median_of_rounds']:8.2f}" if same else f"{'-':>8s}"
        lines.append(
            f"  {e['variant']:24s} {sps['best']:8.0f} {sps['median']:8.0f} {same_text} "
            f"{fast['median']:7.2f} {fast['median_of_rounds']:7.2f} "
            f"{e['run_wall_seconds']['median']:6.1f}"
        )
    return lines


def _pipeline_cells(e: dict) -> list[str]:
    t = e["timeline"]
    compute = "|".join(f"{c:.2f}" for c in t["compute_ms_per_stage"])
    if e["engine"] != "distributed":  # one process: no clocks, transfers or bound
        cells = [f"{t['idle_fraction']:5.2f}", *[f"{'-':>5s}"] * 4]
        cells += [f"{e['step_ms']['median']:6.2f}", f"{t['span_ms']:6.2f}"]
        return [*cells, f"{compute:>13s}", *[f"{'-':>6s}"] * 3]
    return [
        f"{t['idle_fraction']:5.2f}",
        f"{t['idle_fraction_as_recorded']:5.2f}",
        f"{t['gpipe_formula']:5.2f}",
        f"{e['bubble_speedup_bound']:5.2f}",
        f"{t['clock_shift_ms'][-1]:5.2f}",
        f"{e['step_ms']['median']:6.2f}",
        f"{t['span_ms']:6.2f}",
        f"{compute:>13s}",
        f"{t['replay_span_ms']:6.2f}",
        f"{t['waits_ms']:6.2f}",
        f"{e['comm_microbenchmark']['per_step_ms']:6.2f}",
    ]


def _pipeline(entries: list[dict]) -> list[str]:
    lines = [
        "  pipeline (timeline.csv, 4 steps of epoch 1; medians of the rounds), ms per step:",
        f"  {'variant':24s} {'idle':>5s} {'(rec)':>5s} {'GPipe':>5s} {'bound':>5s} "
        f"{'shift':>5s} {'step':>6s} {'span':>6s} {'compute s0|s1':>13s} {'replay':>6s} "
        f"{'waits':>6s} {'comm':>6s}",
    ]
    return lines + [f"  {e['variant']:24s} " + " ".join(_pipeline_cells(e)) for e in entries]


def _legend(comm: dict) -> list[str]:
    return [
        "",
        "idle: measured idle fraction (fmnist.report.timeline_figure) with the stages' clocks "
        "aligned; (rec): "
        "as timeline.csv records it; GPipe: (K-1)/(M+K-1); bound: the speedup it allows, "
        "K*M/(M+K-1); shift: stage 1's clock offset in timeline.csv (ms; the smallest that "
        "puts every receive after its send); step: training ms per step (epochs.csv); span: "
        "first pass start to last pass end of a step; compute: each stage's passes; replay: "
        "the span with zero-latency transfers; waits: span - replay (transfers, the schedule's "
        "own work between passes, wake-ups, on the critical path)",
        "comm (measured directly, two idle gloo processes): M x round trip of one "
        "micro-batch's activation + gradient, + 1 all-reduce (stop vote); round trips: "
        + ", ".join(f"{shape} {ms:.3f} ms" for shape, ms in comm["round_trip_ms"].items())
        + f"; all-reduce {comm['all_reduce_ms']:.3f} ms",
        "",
    ]


def _identity(identity: dict) -> list[str]:
    lines = [
        f"numbers identical: {'yes' if identity['identical'] else 'no'} "
        f"({', '.join(identity['columns'])} of epochs.csv, single autograd mM vs distributed mM, "
        f"every round)"
    ]
    for pair in identity["pairs"]:
        if not pair["identical"]:
            why = (
                "" if pair.get("expected", True) else " (expected: gradients summed last to first)"
            )
            lines.append(f"  DIFFERENT: {pair['variant']} vs {pair['reference']}{why}")
    for pair in identity["kernels_vs_autograd"]:
        lines.append(
            f"kernels step identical to autograd ({pair['variant']}): "
            f"{'yes' if pair['identical'] else 'no'}"
        )
    return lines


def _goal(goal: dict) -> list[str]:
    lines = []
    for model, verdicts in goal["models"].items():
        for reference, scopes in verdicts.items():
            parts = [
                f"{'GPipe' if scope == 'gpipe' else 'any schedule'}: {v['best_variant']} "
                f"{v['speedup']:.2f}x {v['against']} ({'met' if v['met'] else 'not met'})"
                for scope, v in scopes.items()
            ]
            lines.append(
                f"goal >= {goal['goal']}x, model {model}, vs {reference.replace('_', ' ')}: "
                + "; ".join(parts)
            )
    return lines


def table(report: dict) -> str:
    lines = _header(report)
    for model, info in report["models"].items():
        entries = [e for e in report["variants"].values() if e["model"] == model]
        lines += _throughput(model, info, entries) + _pipeline(entries)
    lines += _legend(report["communication"]) + _identity(report["identity"])
    return "\n".join(lines + _goal(report["goal"]))
