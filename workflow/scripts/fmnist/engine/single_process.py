"""The single-process engine: every stage in this one process, each on its own device.

What the training loop (fmnist.engine.trainer) asks of an engine, answered for one process:
it holds the whole model, reads and writes the run folder, and has no peers to agree with,
so every collective is the identity. fmnist.engine.distributed answers the same for one
stage's process among several.
"""

from __future__ import annotations

import torch

from fmnist.engine.devices import peak_rss_mb
from fmnist.engine.model import layer_parameters, model_for
from fmnist.engine.step import make_step
from fmnist.engine.timeline import Timeline


class SingleProcessEngine:
    name = "the training process"
    leads = True  # holds the run folder's lock, reads and writes it, watches the deadline
    ranks = None  # no stage processes

    def __init__(self, devices: list[torch.device]):
        self.devices = devices
        self.own_devices = devices  # what this process waits for at the end of an epoch
        self.data_devices = (devices[0], devices[-1])  # images enter, labels meet the output
        self.loss_device = devices[-1]

    # -- the model and its step ------------------------------------------------
    def check_batches(self, rows: int, params: dict) -> None:
        pass  # a last, shorter batch is split like any other

    def build_model(self, params: dict):
        return model_for(params, self.devices)

    def layer_parameters(self, model, params: dict) -> dict:
        return layer_parameters(dict(enumerate(model.stages)), model.split)

    def make_step(self, model, optimizer, params: dict):
        return make_step(model, optimizer, params["batch_size"], params)

    def step_name(self, step) -> str:
        return type(step).__name__

    def run_step(self, step, batches, image_index, label_index, loss_out) -> None:
        step(*batches(image_index, label_index), loss_out)

    def forward(self, model, x):
        return model(x)

    def start_timeline(self) -> Timeline:
        return Timeline(dict(enumerate(self.devices)))

    def peak_memory(self) -> dict:
        """Each GPU's peak memory since the last epoch, in MB (a column per GPU)."""
        peaks = {}
        for device in sorted({d for d in self.devices if d.type == "cuda"}, key=str):
            peaks[f"peak_memory_mb_cuda{device.index or 0}"] = (
                torch.cuda.max_memory_allocated(device) / 2**20
            )
            torch.cuda.reset_peak_memory_stats(device)
        return peaks

    # -- what peers would agree on: alone, the identity ---------------------------
    def agree_on_setup(self, failure: Exception | None) -> None:
        if failure is not None:
            raise failure

    def agree_to_stop(self, stop) -> bool:
        return stop.should_stop()

    def share_losses(self, losses: torch.Tensor) -> None:
        pass

    def share_totals(self, loss_sum: float, correct: int) -> tuple[float, int]:
        return loss_sum, correct

    def gather_timeline(self, rows: list[dict]) -> list[dict]:
        return rows

    def share_position(self, state: dict | None) -> dict | None:
        return state

    def gather_peak_rss(self) -> list[float]:
        return [peak_rss_mb()]

    def all_succeeded(self, ok: bool) -> bool:
        return ok

    def record_setup(self) -> dict:
        return {}

    def attempt_record(self) -> dict:
        return {}

    def finish(self) -> None:
        pass
