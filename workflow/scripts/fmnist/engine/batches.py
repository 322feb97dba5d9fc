"""The data on the devices: each split held once as uint8, batches gathered by index."""

from __future__ import annotations

from pathlib import Path

import torch

from fmnist.data.idx import load_split
from fmnist.engine.model import INPUT_SIZE


def scale_pixels_(images: torch.Tensor, double_scaling: bool) -> torch.Tensor:
    """Scale float pixels in place as ToTensor does (/255), and again if the tutorial's
    second division is asked for."""
    images.div_(255.0)
    if double_scaling:
        images.div_(255.0)
    return images


class DeviceData:
    """A split held once as uint8 on the device that consumes it."""

    def __init__(self, data_dir: Path, split: str, image_device, label_device):
        images, labels = load_split(data_dir, split)
        self.images = torch.from_numpy(images.reshape(len(images), -1).copy()).to(image_device)
        self.labels = torch.from_numpy(labels.astype("int64")).to(label_device)

    def __len__(self) -> int:
        return len(self.labels)


class BatchMaker:
    """Gathers batches by index into preallocated buffers and scales them like ToTensor."""

    def __init__(self, data: DeviceData, batch_size: int, double_scaling: bool):
        self.data = data
        self.double_scaling = double_scaling
        self.raw = torch.empty(
            (batch_size, INPUT_SIZE), dtype=torch.uint8, device=data.images.device
        )
        self.scaled = torch.empty(
            (batch_size, INPUT_SIZE), dtype=torch.float32, device=data.images.device
        )
        self.targets = torch.empty(batch_size, dtype=torch.int64, device=data.labels.device)
        self.views: dict[int, tuple] = {}

    def __call__(self, image_index, label_index):
        n = len(image_index)
        if n not in self.views:
            self.views[n] = (self.raw[:n], self.scaled[:n], self.targets[:n])
        raw, scaled, targets = self.views[n]
        torch.index_select(self.data.images, 0, image_index, out=raw)
        scale_pixels_(scaled.copy_(raw), self.double_scaling)
        torch.index_select(self.data.labels, 0, label_index, out=targets)
        return scaled, targets
