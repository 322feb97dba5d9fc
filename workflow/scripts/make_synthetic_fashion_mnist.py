#!/usr/bin/env python3
"""Write a SYNTHETIC dataset in FashionMNIST's exact file format, for offline checks.

The four gzipped IDX files (noisy class templates, learnable), an MD5SUMS file
and a notice that says the data is synthetic. The folder then serves as a local
mirror for download_fashion_mnist.py. Imports no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fmnist.data.synthetic import SYNTHETIC_NOTICE, write_synthetic


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train_size < 1 or args.test_size < 1:
        parser.error("--train-size and --test-size must be at least 1")
    sums = write_synthetic(args.out_dir, args.train_size, args.test_size, args.seed)
    print(SYNTHETIC_NOTICE.strip())
    for name, md5 in sums.items():
        print(f"{args.out_dir / name}: {md5}")


if __name__ == "__main__":
    main()
