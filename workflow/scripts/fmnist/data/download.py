"""Fetching the four files: mirrors tried in order, checksums checked before a file is kept.

A mirror is an http(s) base URL, a file:// URL or a local folder holding a pre-staged
copy (flat, or torchvision's FashionMNIST/raw/ layout). Each file is written under a
temporary name and renamed only after its checksum matched, so training never reads a
corrupt or truncated file. Imports no torch.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from fmnist.data.idx import FILE_NAMES, MANIFEST, md5_file_text, md5sum
from fmnist.rundir.files import atomic_write_text

CHUNK = 1 << 20
OFFLINE_HINT = (
    "If this machine cannot reach the internet (a compute node or an air-gapped "
    "cluster), copy the four .gz files to a folder it can read and list that folder "
    "first in the config key data.mirrors, e.g.\n"
    "  data:\n    mirrors: [/path/to/fashion_mnist]\n"
    "(the download rule is a local rule: on a cluster it runs on the login node).\n"
    "To check the installation without any download: make demo (config/demo.yaml)."
)


class DownloadError(Exception):
    """No mirror gave a file with the expected checksum, or a checksum is missing."""


class MirrorError(Exception):
    """One mirror failed for one file; the message says why."""


def local_candidates(root: Path, name: str) -> list[Path]:
    # torchvision keeps its downloads in FashionMNIST/raw/: accept that layout too.
    return [root / name, root / "FashionMNIST" / "raw" / name]


def open_source(mirror: str, name: str, timeout: float):
    """Return (binary stream, description) for `name` on `mirror`."""
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme in ("http", "https"):
        url = urllib.parse.urljoin(mirror if mirror.endswith("/") else mirror + "/", name)
        request = urllib.request.Request(url, headers={"User-Agent": "fmnist-workflow"})
        try:
            return urllib.request.urlopen(request, timeout=timeout), url
        except urllib.error.HTTPError as err:
            raise MirrorError(f"{url}: HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise MirrorError(f"{url}: cannot connect ({reason})") from err
    if parsed.scheme not in ("", "file"):
        raise MirrorError(f"{mirror}: unsupported URL scheme {parsed.scheme!r}")
    root = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else mirror)
    for candidate in local_candidates(root, name):
        if candidate.is_file():
            return open(candidate, "rb"), str(candidate)
    raise MirrorError(f"{root / name}: no such file")


def fetch_verified(mirror: str, name: str, expected_md5: str, dest: Path, timeout: float) -> str:
    """Copy `name` from `mirror` to `dest`, renaming into place only if the MD5 matches."""
    partial = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    source, where = open_source(mirror, name, timeout)
    digest = hashlib.md5()
    size = 0
    try:
        with source, open(partial, "wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected_md5:
            raise MirrorError(
                f"{where}: MD5 mismatch ({size} bytes, got {digest.hexdigest()}, "
                f"expected {expected_md5}; corrupt or truncated)"
            )
        os.replace(partial, dest)
    except (OSError, EOFError, http.client.HTTPException) as err:
        raise MirrorError(f"{where}: read failed after {size} bytes ({err!r})") from err
    finally:
        partial.unlink(missing_ok=True)
    return where


def set_aside_if_corrupt(path: Path, expected_md5: str) -> bool:
    """True if `path` already holds the right file; move a wrong one out of the way."""
    if not path.exists():
        return False
    if md5sum(path) == expected_md5:
        return True
    aside = path.with_name(path.name + ".bad-md5")
    os.replace(path, aside)
    print(f"{path}: wrong MD5, moved aside to {aside}", flush=True)
    return False


def download_all(
    dest_dir: Path, mirrors: list[str], md5: dict, timeout: float = 60.0, manifest=None
) -> None:
    """Fetch every file that is not already there with the right sum; then write the
    manifest (md5sum lines; default dest_dir/MD5SUMS) that training checks the files by."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    missing = [name for name in FILE_NAMES if name not in md5]
    if missing:
        raise DownloadError(f"no MD5 sum given for {', '.join(missing)} (config key data.md5)")
    for name in FILE_NAMES:
        dest = dest_dir / name
        if set_aside_if_corrupt(dest, md5[name]):
            print(f"{dest}: already present, MD5 OK", flush=True)
            continue
        failures = []
        for mirror in mirrors:
            started = time.perf_counter()
            try:
                where = fetch_verified(mirror, name, md5[name], dest, timeout)
            except MirrorError as err:
                failures.append(str(err))
                print(f"mirror failed: {err}", flush=True)
                continue
            seconds = time.perf_counter() - started
            print(f"{dest}: fetched from {where} in {seconds:.1f} s, MD5 OK", flush=True)
            break
        else:
            listing = "\n".join(f"  - {failure}" for failure in failures)
            raise DownloadError(
                f"could not fetch {name} from any of {len(mirrors)} mirror(s) "
                f"(config key data.mirrors):\n{listing}\n{OFFLINE_HINT}"
            )
    manifest = dest_dir / MANIFEST if manifest is None else manifest
    atomic_write_text(manifest, md5_file_text({n: md5[n] for n in FILE_NAMES}))
