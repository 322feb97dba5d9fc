#!/usr/bin/env python3
"""Fetch the four FashionMNIST files, trying mirrors in order, checking MD5 sums.

A mirror is an http(s) base URL, a file:// URL or a local folder holding a
pre-staged copy (flat, or torchvision's FashionMNIST/raw/ layout); the defaults are
the config's (data.mirrors, data.md5). Imports no torch.

Example:
    python workflow/scripts/download_fashion_mnist.py --dest resources/fashion_mnist \\
        --mirror /shared/datasets/fashion_mnist --mirror https://example.org/fmnist/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fmnist.config.settings import defaults
from fmnist.data.download import DownloadError, download_all
from fmnist.data.idx import parse_md5_pairs, read_md5_file

OFFICIAL = defaults()["data"]  # the official mirrors and sums: the config's defaults


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", required=True, type=Path, help="folder for the four files")
    parser.add_argument(
        "--mirror",
        action="append",
        help="base URL or local folder, tried in the order given (default: official mirrors)",
    )
    parser.add_argument("--md5", action="append", default=[], help="NAME=SUM (default: official)")
    parser.add_argument("--md5-file", type=Path, help="md5sum-style file with the expected sums")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per connection")
    parser.add_argument(
        "--manifest", type=Path, help="where to write the verified sums (default: DEST/MD5SUMS)"
    )
    args = parser.parse_args(argv)
    md5 = dict(OFFICIAL["md5"])
    if args.md5_file:
        md5.update(read_md5_file(args.md5_file))
    try:
        md5.update(parse_md5_pairs(args.md5))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        mirrors = args.mirror or OFFICIAL["mirrors"]
        download_all(args.dest, mirrors, md5, args.timeout, args.manifest)
    except DownloadError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
