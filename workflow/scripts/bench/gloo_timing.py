"""The distributed engine's communication, timed directly, and the machine checked with it.

Two gloo processes (1 thread each, torch.multiprocessing, spawned) do what the engine's
two stages do between passes: stage 0 sends one micro-batch's activation (batch/M rows x
the boundary width, float32) and stage 1 returns a gradient of that shape, many times
(round trips); and they all-reduce one int64, the engine's per-step stop vote. Per step
that is M round trips + 1 all-reduce. The same two processes then time a 1-thread matmul,
rank 0 alone and both at once: two free CPUs give twice one.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.pipeline_results import summarize
from bench.pipeline_variants import RunFailed, label, model_info


def _sgemm_rate(rows: int, seconds: float) -> float:
    """GFLOP/s of a 1-thread (rows x 1024) @ (1024 x 1024) matmul, repeated ``seconds``."""
    a, w = torch.randn(rows, 1024), torch.randn(1024, 1024)
    out = torch.empty(rows, 1024)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            torch.mm(a, w, out=out)
        count += 10
    return 2 * rows * 1024 * 1024 * count / (time.perf_counter() - started) / 1e9


def _round_trips(rank: int, shape, repeats: int, warmup: int) -> list[float]:
    tensor, times = torch.randn(*shape), []
    for _ in range(warmup + repeats):
        if rank == 0:  # the activation goes to stage 1, its gradient comes back
            started = time.perf_counter()
            dist.send(tensor, 1)
            dist.recv(tensor, 1)
            times.append(time.perf_counter() - started)
        else:
            dist.recv(tensor, 0)
            dist.send(tensor, 0)
    return times[warmup:]


def _stop_votes(repeats: int, warmup: int) -> list[float]:
    flag, times = torch.zeros(1, dtype=torch.int64), []
    for i in range(warmup + repeats):  # the engine's stop vote before every step
        started = time.perf_counter()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        int(flag.item())
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def _sgemm_alone_and_together(rank: int, rows: int) -> dict:
    """Rank 0's matmul rate alone, then both ranks' at once."""
    _sgemm_rate(rows, 0.1)
    dist.barrier()
    alone = _sgemm_rate(rows, 0.5) if rank == 0 else 0.0
    dist.barrier()
    rates = torch.tensor([0.0, 0.0], dtype=torch.float64)
    rates[rank] = _sgemm_rate(rows, 0.5)
    dist.all_reduce(rates)
    return {"alone": alone, "together": rates.tolist()}


def _comm_worker(rank: int, store: str, shapes: list, repeats: int, rows: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        warmup = max(5, repeats // 10)
        result = {"round_trip_seconds": {}}
        for shape in shapes:
            times = _round_trips(rank, shape, repeats, warmup)
            result["round_trip_seconds"]["x".join(map(str, shape))] = times
        result["all_reduce_seconds"] = _stop_votes(repeats, warmup)
        result["sgemm_gflops"] = _sgemm_alone_and_together(rank, rows)
        if rank == 0:
            queue.put(result)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def measure_comm(shapes: list[tuple[int, int]], repeats: int, rows: int, tmp: Path) -> dict:
    """Round trips of each shape and 1-element all-reduces between two gloo processes, and
    their 1-thread matmul speed alone and together (do the two CPUs give twice one?)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    store = tmp / f"comm-store-{time.monotonic_ns()}"
    workers = [
        context.Process(target=_comm_worker, args=(r, str(store), shapes, repeats, rows, queue))
        for r in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        result = queue.get(timeout=300)
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    if any(w.exitcode != 0 for w in workers):
        raise RunFailed(
            f"communication benchmark: worker exit codes {[w.exitcode for w in workers]}"
        )
    return result


def comm_shapes(args) -> dict[tuple[str, int], tuple[int, int]]:
    """Per (model, M): the shape of one micro-batch's activation at the stage boundary."""
    return {
        (label(h), m): (args.batch_size // m, model_info(h)["boundary_width"])
        for h in args.models
        for m in args.microbatches
    }


def combine_rounds(rounds: list[dict]) -> dict:
    """measure_comm's results of every round: times pooled, one sgemm check per round."""
    comm = {"round_trip_seconds": {}, "all_reduce_seconds": [], "sgemm_gflops": []}
    for measured in rounds:
        comm["sgemm_gflops"].append(measured["sgemm_gflops"])
        for shape, times in measured["round_trip_seconds"].items():
            comm["round_trip_seconds"].setdefault(shape, []).extend(times)
        comm["all_reduce_seconds"].extend(measured["all_reduce_seconds"])
    return comm


def communication(comm: dict) -> dict:
    return {
        "how": "two gloo processes, 1 thread each: send a (batch/M x boundary width) "
        "float32 tensor and receive one back (activation + gradient), median of "
        "--comm-repeats per round; all-reduce of one int64 (the stop vote)",
        "round_trip_ms": {
            s: 1e3 * statistics.median(t) for s, t in comm["round_trip_seconds"].items()
        },
        "all_reduce_ms": 1e3 * statistics.median(comm["all_reduce_seconds"]),
    }


def machine_check(rounds: list[dict], rows: int) -> dict:
    """Two 1-thread processes' matmul throughput together, against one alone."""
    alone = [r["alone"] for r in rounds]
    together = [sum(r["together"]) for r in rounds]
    return {
        "what": f"1-thread ({rows} x 1024) @ (1024 x 1024) float32 matmul, 0.5 s, in the "
        "two communication processes: rank 0 alone, then both at once",
        "alone_gflops": summarize(alone),
        "together_gflops": summarize(together),
        "scaling": summarize([t / a for t, a in zip(together, alone)]),
    }
