"""What benchmark.py does: every variant of bench.step_variants timed round by round,
interleaved, and the figures over the rounds (samples/s, ratios to the tutorial, GFLOP/s)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from fmnist.data import idx
from fmnist.engine.devices import resolve_devices
from fmnist.engine.trainer import configure_determinism

from bench.common import prepare_data, summarize
from bench.machine import environment
from bench.step_variants import build_variants, sgemm_gflops, step_flops, torchvision_root


def time_rounds(args, runs: dict, devices) -> tuple[dict, dict]:
    """Seconds and losses of every (threads, variant) per round, and the sgemm peaks."""
    results = {
        t: {key: {"seconds": [], "samples": v.samples, "losses": []} for key, v in runs[t]}
        for t in args.threads
    }
    sgemm = {t: [] for t in args.threads}
    for rep in range(args.repetitions):
        for t in args.threads:
            configure_determinism(t)
            # alternate the order, so no variant always runs first or last in a round
            order = runs[t] if rep % 2 == 0 else runs[t][::-1]
            for key, variant in order:
                seconds, loss = variant.run()
                results[t][key]["seconds"].append(seconds)
                results[t][key]["losses"].append(loss)
                rate = variant.samples / seconds
                print(
                    f"round {rep + 1}/{args.repetitions}  threads {t}  {key:34s} "
                    f"{rate:10.0f} samples/s",
                    flush=True,
                )
            sgemm[t].append(sgemm_gflops(args.sgemm_size, devices[0]))
    return results, sgemm


def variant_entries(variants: list, results: dict, flops: dict) -> dict:
    """Per variant: samples/s, ratios to the first variant (the tutorial), GFLOP/s."""
    entries, tutorial = {}, None
    for key, variant in variants:
        r = results[key]
        entry = {
            "label": variant.label,
            "group": variant.group,
            "samples_per_second": summarize([r["samples"] / s for s in r["seconds"]]),
            "losses": r["losses"],
        }
        tutorial = tutorial or entry
        tut, sps = tutorial["samples_per_second"], entry["samples_per_second"]
        entry["ratio_to_tutorial"] = {
            "best": sps["best"] / tut["best"],
            "median": sps["median"] / tut["median"],
            "median_of_rounds": statistics.median(a / b for a, b in zip(sps["all"], tut["all"])),
        }
        entry["gflops"] = {k: sps[k] * flops["total"] / 1e9 for k in ("best", "median")}
        entries[key] = entry
    return entries


def benchmark(args, argv: list[str]) -> dict:
    devices, why = resolve_devices("auto" if args.devices == ["auto"] else args.devices)
    print(why, flush=True)
    flops = step_flops(args.hidden_size)
    with tempfile.TemporaryDirectory(prefix="fmnist-benchmark-") as tmp:
        tmp = Path(tmp)
        data_dir, data_source = prepare_data(args, tmp)
        args.train_size_actual = len(idx.load_split(data_dir, "train")[1])
        root = torchvision_root(data_dir, tmp / "torchvision")
        # One training run per (threads, variant): round r is epoch r of that run.
        runs = {
            t: build_variants(args, data_dir, root, tmp / f"runs{t}", devices) for t in args.threads
        }
        results, sgemm = time_rounds(args, runs, devices)
    settings = {
        "devices": [str(d) for d in devices],
        **{k: getattr(args, k) for k in ("batch_size", "lr", "hidden_size", "seed")},
        **{k: getattr(args, k) for k in ("repetitions", "threads", "adam_impls", "microbatches")},
        "floor_steps": args.floor_steps or -(-args.train_size_actual // args.batch_size),
        "sgemm_size": args.sgemm_size,
        "data": data_source,
        "train_samples": args.train_size_actual,
    }
    return {
        "command": ["workflow/scripts/benchmark.py", *argv],
        "settings": settings,
        "environment": environment(devices),
        "flops_per_sample": flops,
        "threads": {
            str(t): {
                "variants": variant_entries(runs[t], results[t], flops),
                "sgemm_gflops": summarize(sgemm[t]),
            }
            for t in args.threads
        },
    }


def table(report: dict) -> str:
    flops = report["flops_per_sample"]["total"]
    lines = [
        f"FLOPs per sample of a step: {flops:,} (matmuls: forward, weight gradients, "
        "layer 2's input gradient)",
        f"devices {report['settings']['devices']}, batch size {report['settings']['batch_size']}, "
        f"{report['settings']['train_samples']} training samples, "
        f"{report['settings']['repetitions']} interleaved rounds",
    ]
    for t, block in report["threads"].items():
        lines += [
            "",
            f"threads {t}: samples/s (best, median of rounds); x = ratio to (a): "
            "best/best, median/median, median of per-round ratios",
            f"{'variant':46s} {'best':>9s} {'median':>9s} {'x best':>7s} {'x med':>7s} "
            f"{'x round':>7s} {'GFLOP/s':>8s}",
        ]
        for entry in block["variants"].values():
            sps, ratio = entry["samples_per_second"], entry["ratio_to_tutorial"]
            name = f"({entry['group']}) {entry['label']}"
            lines.append(
                f"{name:46s} {sps['best']:9.0f} {sps['median']:9.0f} {ratio['best']:7.2f} "
                f"{ratio['median']:7.2f} {ratio['median_of_rounds']:7.2f} "
                f"{entry['gflops']['best']:8.1f}"
            )
        peak = block["sgemm_gflops"]
        lines.append(
            f"    machine matmul peak, {report['settings']['sgemm_size']}^3 sgemm: "
            f"{peak['best']:.1f} GFLOP/s best, {peak['median']:.1f} median"
        )
    return "\n".join(lines)
