"""FashionMNIST's four files: their names, IDX reading and writing, checksums.

The official checksums and mirrors are config defaults (workflow/schemas/config.schema.yaml,
data.md5 and data.mirrors). Imports numpy only, never torch.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np

# The four files, keyed by (split, kind). Names are the official ones.
FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
FILE_NAMES = list(FILES.values())
MANIFEST = "MD5SUMS"  # the four files' sums, written beside them once they are verified

IMAGE_SIDE = 28
NUM_CLASSES = 10

# IDX type code 0x08 = unsigned byte, the only type FashionMNIST uses.
_UBYTE = 0x08


class IdxFormatError(ValueError):
    """A file that is not a valid uint8 IDX file."""


class DataError(ValueError):
    """A data file that is missing or is not the one expected; the message says the fix."""


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a (gzipped) uint8 IDX file, checking its header against its size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise IdxFormatError(f"{path}: cannot read IDX data ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise IdxFormatError(f"{path}: not a uint8 IDX file (bad magic number)")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise IdxFormatError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    expected = int(np.prod(shape))
    if len(raw) - header_end != expected:
        raise IdxFormatError(
            f"{path}: header says shape {shape} ({expected} bytes) but "
            f"{len(raw) - header_end} data bytes follow"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file; mtime 0 keeps the bytes stable."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(header + array.tobytes())


def load_split(data_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of one split, both uint8, validated."""
    data_dir = Path(data_dir)
    images_path = data_dir / FILES[(split, "images")]
    labels_path = data_dir / FILES[(split, "labels")]
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise IdxFormatError(f"{images_path}: expected N x 28 x 28 images, got {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise IdxFormatError(
            f"{labels_path}: {labels.shape} labels do not match {images.shape[0]} images "
            f"in {images_path}"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise IdxFormatError(f"{labels_path}: label {labels.max()} is not in 0..9")
    return images, labels


def read_md5_file(path: str | os.PathLike) -> dict:
    """Parse `md5sum` output ("<hex>  <name>" per line) into {name: hex}."""
    sums = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 32:
            raise ValueError(f"{path}:{number}: expected '<md5>  <file name>', got {line!r}")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def md5_file_text(sums: dict) -> str:
    """`md5sum`-style lines ("<hex>  <name>"), as read_md5_file reads them."""
    return "".join(f"{value}  {name}\n" for name, value in sums.items())


def parse_md5_pairs(pairs: list[str]) -> dict:
    """{name: sum} from "NAME=SUM" words (ValueError naming a malformed one)."""
    sums = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or len(value) != 32:
            raise ValueError(f"--md5 expects NAME=32-hex-digit-sum, got {pair!r}")
        sums[name] = value.lower()
    return sums


def verify_data(data_dir: Path, expected: dict | None) -> dict:
    """The four files' MD5 sums, checked against ``expected`` (when given).

    A file with another sum is moved aside (NAME.bad-md5), so that the workflow's download
    rule fetches it again on the next run; DataError names it and says so.
    """
    missing = [name for name in FILE_NAMES if not (data_dir / name).is_file()]
    if missing:
        raise DataError(f"{data_dir} lacks {', '.join(missing)} (config key data.dir)")
    sums = {name: md5sum(data_dir / name) for name in FILE_NAMES}
    for name, value in sums.items():
        if expected is not None and value != expected.get(name):
            path = data_dir / name
            aside = path.with_name(path.name + ".bad-md5")
            os.replace(path, aside)
            raise DataError(
                f"{path} has MD5 {value}, expected {expected.get(name)} (config key data.md5); "
                f"moved it aside to {aside}: run the workflow again to fetch it again"
            )
    return sums
