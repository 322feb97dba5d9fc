"""model.pt: the run's final weights in one file, under the single-process engine's names,
that torch.load(path, weights_only=True) reads; written from the last checkpoint's shards
one layer at a time, so that no process holds the whole model to write it.

torch.save writes the file's layout first, without the tensors' bytes
(torch.serialization.skip_data, from tensors that have shapes but no storage); each
layer's bytes are then read from the shards and written where torch.save left their place.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.checkpoint import FileSystemReader

from fmnist.engine.checkpoint import load_tensors
from fmnist.engine.model import single_process_names
from fmnist.rundir.files import atomic_write

ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip entry's header before its name
"""Where a file's data starts in a zip archive: after this header, its name and its extra field."""


class _Placement:
    """Where a tensor's bytes go: its storage's record in the archive and its offset there."""

    def __init__(self, record: str, offset: int):
        self.record, self.offset = record, offset


def _placement(storage_key, storage_offset, *_rest) -> _Placement:
    return _Placement(storage_key, storage_offset)


class _LayoutReader(pickle.Unpickler):
    """Reads data.pkl of a torch.save'd dict of tensors: each name's storage record and
    offset, without loading anything else (only the names torch.save writes are known)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _placement
        if (module, name) == ("collections", "OrderedDict") or module == "torch":
            return lambda *args: None  # hooks and storage types: not needed here
        raise pickle.UnpicklingError(f"model.pt layout: unexpected {module}.{name}")

    def persistent_load(self, pid):
        return pid[2]  # ('storage', type, key, location, size): the key names the record


def data_offsets(handle) -> dict[str, tuple[int, int]]:
    """Where each tensor's storage starts in the torch.save'd file ``handle``, and the
    tensor's offset in it (in elements)."""
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        root = archive.namelist()[0].split("/")[0]
        with archive.open(f"{root}/data.pkl") as pkl:
            placements = _LayoutReader(pkl).load()
        entries = {info.filename: info for info in archive.infolist()}
    offsets = {}
    for name, placement in placements.items():
        entry = entries[f"{root}/data/{placement.record}"]
        handle.seek(entry.header_offset)
        header = ZIP_LOCAL_HEADER.unpack(handle.read(ZIP_LOCAL_HEADER.size))
        start = entry.header_offset + ZIP_LOCAL_HEADER.size + header[-2] + header[-1]
        offsets[name] = (start, placement.offset)
    return offsets


def write_model(path: Path, shards: Path, params: dict) -> None:
    """model.pt from the checkpoint in ``shards``, one layer's tensors in memory at a time."""
    names = single_process_names(params)  # layers.{j}.weight -> stages.{s}.….weight
    stored = FileSystemReader(shards).read_metadata().state_dict_metadata

    def write(handle) -> None:
        with FakeTensorMode():
            layout = {
                names[n]: torch.empty(
                    stored[f"model.{n}"].size, dtype=stored[f"model.{n}"].properties.dtype
                )
                for n in names
            }
        with torch.serialization.skip_data(materialize_fake_tensors=True):
            torch.save(layout, handle)
        handle.flush()
        offsets = data_offsets(handle)
        for layer in sorted({n.rsplit(".", 1)[0] for n in names}):
            mine = [n for n in names if n.rsplit(".", 1)[0] == layer]
            tensors = load_tensors(shards, {f"model.{n}": stored[f"model.{n}"].size for n in mine})
            for n in mine:
                tensor = tensors[f"model.{n}"]
                start, offset = offsets[names[n]]
                handle.seek(start + offset * tensor.element_size())
                handle.write(memoryview(tensor.numpy()).cast("B"))
        handle.seek(0, 2)

    atomic_write(path, write)
