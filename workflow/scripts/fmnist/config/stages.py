"""The model's layers and how they are assigned to stages (train.hidden_sizes,
train.stage_split, train.devices): one place, read by the config checks, the engine and the
report. Imports no torch."""

from __future__ import annotations

from fmnist.data.idx import IMAGE_SIDE, NUM_CLASSES


def layer_shapes(params: dict) -> list[tuple[int, int]]:
    """(in, out) of each Linear: 784 -> hidden_sizes... -> 10."""
    sizes = [IMAGE_SIDE * IMAGE_SIDE, *params["hidden_sizes"], NUM_CLASSES]
    return list(zip(sizes[:-1], sizes[1:]))


def layer_flops(params: dict) -> list[int]:
    """Each Linear's forward FLOPs per sample, 2 * in * out (what balancing weighs)."""
    return [2 * i * o for i, o in layer_shapes(params)]


SCHEDULE_PLACEMENT = {
    "gpipe": "one",
    "1f1b": "one",
    "looped_bfs": "loop",
    "interleaved_1f1b": "loop",
    "interleaved_zero_bubble": "loop",
    "zbv_zero_bubble": "v",
    "dual_pipe_v": "v",
}
"""How each schedule of torch.distributed.pipelining places stages on processes: one stage
per process; a loop (stage s on process s mod P); or a V (process r holds stages r and
2P-1-r, so the last stage is back on the first process)."""


def stages_per_process(params: dict) -> int:
    """train.stages_per_process where the distributed engine runs, else 1."""
    distributed = params.get("engine") == "distributed"
    return params.get("stages_per_process", 1) if distributed else 1


def stage_count(params: dict) -> int:
    """How many stages: train.stage_split's length if given, else one per listed device
    (two or more) and stages_per_process in each, else (auto, or one device for all) the
    tutorial's two per process."""
    split, devices = params["stage_split"], params["devices"]
    if isinstance(split, list):
        return len(split)
    if isinstance(devices, list) and len(devices) > 1:
        return len(devices) * stages_per_process(params)
    return 2 * stages_per_process(params)  # hidden_sizes has at least one entry


def process_count(params: dict) -> int:
    """The processes a run trains in: one, or one per stages_per_process stages."""
    if params.get("engine") != "distributed":
        return 1
    return stage_count(params) // stages_per_process(params)


def stage_ranks(params: dict) -> list[int]:
    """The process (rank) of each stage, as the run's schedule places them."""
    processes, stages = process_count(params), stage_count(params)
    placement = SCHEDULE_PLACEMENT[params.get("schedule", "gpipe")]
    if placement == "v":
        return [s if s < processes else 2 * processes - 1 - s for s in range(stages)]
    return [s % processes for s in range(stages)]


def balanced_split(costs: list[int], stages: int) -> list[int]:
    """Layers per stage: contiguous blocks that minimise the costliest stage (ties: the
    split whose layer counts come first in order)."""
    n = len(costs)
    best: dict[tuple[int, int], tuple[int, list[int]]] = {(0, 0): (0, [])}
    for k in range(1, stages + 1):
        for end in range(k, n - (stages - k) + 1):
            candidates = []
            for start in range(k - 1, end):
                if (k - 1, start) in best:
                    worst, counts = best[(k - 1, start)]
                    candidates.append((max(worst, sum(costs[start:end])), [*counts, end - start]))
            best[(k, end)] = min(candidates)
    return best[(stages, n)][1]


def stage_split(params: dict) -> list[int]:
    """The number of layers of each stage, in order (checked by check_run_params)."""
    split = params["stage_split"]
    if isinstance(split, list):
        return list(split)
    return balanced_split(layer_flops(params), stage_count(params))
