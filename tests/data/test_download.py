"""fmnist/data/download.py and its script download_fashion_mnist.py against a real HTTP server on
127.0.0.1.

The server serves small SYNTHETIC files in FashionMNIST's format (synthetic.write_synthetic)
and misbehaves on purpose depending on the first path segment of the URL:

    /good/NAME       the file
    /missing/NAME    404
    /corrupt/NAME    the file with one byte flipped (same length, wrong MD5)
    /truncated/NAME  Content-Length of the whole file, half the bytes, then the connection closes
    /chunked-truncated/NAME  chunked transfer, first half as one chunk, connection closes
    /not-http/NAME   a non-HTTP banner (a mirror URL with the port of some other service)

Every request is recorded, so the tests can tell which mirror served which file and that a
file already present with the right MD5 was not fetched again. Nothing here needs the internet.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fmnist.config import settings
from fmnist.data import download, idx, synthetic
from helpers import md5_of

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "workflow" / "scripts"
DOWNLOAD_SCRIPT = SCRIPTS / "download_fashion_mnist.py"


NAMES = list(idx.FILE_NAMES)
FIRST = NAMES[0]  # download_all fetches the files in this order and stops at the first failure


def leftovers(folder: Path) -> list[str]:
    """Temporary files the download may have left behind."""
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name or ".tmp" in p.name)


# ----------------------------------------------------------------------------- server


class MirrorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep pytest's output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        mode, _, name = self.path.lstrip("/").partition("/")
        source = self.server.root / name
        if mode == "not-http":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            self.close_connection = True
            return
        if mode == "missing" or not name or not source.is_file():
            self.send_error(404, "Not Found")
            self.close_connection = True
            return
        data = source.read_bytes()
        if mode == "corrupt":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        if mode == "chunked-truncated":
            half = data[: len(data) // 2]
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if mode == "truncated" else data)
        self.wfile.flush()
        self.close_connection = True


class Mirror:
    """A ThreadingHTTPServer on 127.0.0.1, port chosen by the OS."""

    def __init__(self, root: Path):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
        self.httpd.root = root
        self.httpd.requests = []
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/"

    @property
    def requests(self) -> list[str]:
        return list(self.httpd.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, dict]:
    """A folder with the four files (+ MD5SUMS) and their sums, as a mirror would hold them."""
    root = tmp_path_factory.mktemp("www")
    sums = synthetic.write_synthetic(root, train_size=60, test_size=20, seed=3)
    assert sorted(sums) == sorted(NAMES)
    return root, sums


@pytest.fixture(scope="module")
def server(published):
    server = Mirror(published[0])
    yield server
    server.close()


@pytest.fixture
def mirror(server):
    """The module's server, its request log emptied for this test."""
    server.httpd.requests.clear()
    return server


@pytest.fixture
def sums(published) -> dict:
    return dict(published[1])


@pytest.fixture
def dest(tmp_path) -> Path:
    return tmp_path / "dest"


@pytest.fixture
def dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def assert_complete(dest: Path, sums: dict) -> None:
    for name in NAMES:
        assert md5_of(dest / name) == sums[name], name
    assert leftovers(dest) == []
    listing = sorted(p.name for p in dest.iterdir() if not p.name.endswith(".bad-md5"))
    assert listing == sorted([*NAMES, idx.MANIFEST])
    # The manifest training checks the files against: written once all four are verified.
    assert idx.read_md5_file(dest / idx.MANIFEST) == {name: sums[name] for name in NAMES}


def requested(mirror: Mirror, mode: str) -> list[str]:
    return [path.split("/", 2)[2] for path in mirror.requests if path.startswith(f"/{mode}/")]


# ------------------------------------------------------------------------ success


def test_first_mirror_with_sums_from_md5sums(mirror, published, dest, capsys):
    root, sums = published
    md5 = idx.read_md5_file(root / "MD5SUMS")
    assert md5 == sums

    download.download_all(dest, [mirror.url("good"), mirror.url("missing")], md5, timeout=10)

    assert_complete(dest, sums)
    assert requested(mirror, "good") == NAMES
    assert requested(mirror, "missing") == []
    out = capsys.readouterr().out
    for name in NAMES:
        assert f"{dest / name}: fetched from {mirror.url('good')}{name} in " in out
    assert out.count("MD5 OK") == 4
    assert "mirror failed" not in out
    # The data is readable and has the sizes it was written with.
    images, labels = idx.load_split(dest, "train")
    assert images.shape == (60, 28, 28) and labels.shape == (60,)
    images, labels = idx.load_split(dest, "test")
    assert images.shape == (20, 28, 28) and labels.shape == (20,)


# ----------------------------------------------------------------------- fallback


@pytest.mark.parametrize(
    "bad_mode, reason",
    [
        pytest.param("missing", "HTTP 404", id="404"),
        pytest.param("corrupt", "MD5 mismatch", id="corrupt"),
        pytest.param("truncated", "MD5 mismatch", id="truncated"),
        # Python's http.client raises IncompleteRead / BadStatusLine here (not OSError).
        pytest.param("chunked-truncated", "", id="chunked-truncated"),
        pytest.param("not-http", "", id="not-http"),
    ],
)
def test_bad_first_http_mirror_falls_back_to_next(mirror, sums, dest, capsys, bad_mode, reason):
    download.download_all(dest, [mirror.url(bad_mode), mirror.url("good")], sums, timeout=10)

    assert_complete(dest, sums)
    # Each file was first asked of the bad mirror, then of the good one.
    assert requested(mirror, bad_mode) == NAMES
    assert requested(mirror, "good") == NAMES
    out = capsys.readouterr().out
    assert out.count("mirror failed: ") == 4
    assert reason in out
    for name in NAMES:
        assert f"mirror failed: {mirror.url(bad_mode)}{name}: " in out
        assert f"fetched from {mirror.url('good')}{name} " in out


def test_dead_port_falls_back_to_next(mirror, sums, dest, dead_port, capsys):
    dead = f"http://127.0.0.1:{dead_port}/fmnist/"
    download.download_all(dest, [dead, mirror.url("good")], sums, timeout=10)

    assert_complete(dest, sums)
    out = capsys.readouterr().out
    assert out.count(f"mirror failed: {dead}") == 4
    assert "cannot connect" in out
    assert requested(mirror, "good") == NAMES


def test_hanging_mirror_times_out_and_falls_back(mirror, sums, dest, capsys):
    # Accepts connections (in the kernel's backlog) but never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        hanging = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        download.download_all(dest, [hanging, mirror.url("good")], sums, timeout=0.3)
    finally:
        silent.close()
    assert_complete(dest, sums)
    out = capsys.readouterr().out
    assert out.count(f"mirror failed: {hanging}") == 4
    assert "timed out" in out


def test_https_mirror_that_speaks_plain_http_falls_back(mirror, sums, dest, capsys):
    tls = f"https://127.0.0.1:{mirror.port}/good/"
    download.download_all(dest, [tls, mirror.url("good")], sums, timeout=10)
    assert_complete(dest, sums)
    out = capsys.readouterr().out
    assert out.count(f"mirror failed: {tls}") == 4


def test_corrupt_file_never_reaches_destination(mirror, sums, dest):
    with pytest.raises(download.DownloadError):
        download.download_all(dest, [mirror.url("corrupt"), mirror.url("truncated")], sums, 10)
    # Both mirrors were tried for the first file; nothing corrupt is left behind.
    assert requested(mirror, "corrupt") == [FIRST]
    assert requested(mirror, "truncated") == [FIRST]
    assert list(dest.iterdir()) == []


def test_all_mirrors_fail_lists_every_mirror_and_reason(
    mirror, published, sums, dest, dead_port, tmp_path
):
    empty_folder = tmp_path / "empty-share"
    empty_folder.mkdir()
    mirrors = [
        mirror.url("missing"),
        f"http://127.0.0.1:{dead_port}/",
        mirror.url("corrupt"),
        mirror.url("truncated"),
        str(empty_folder),
        "ftp://example.invalid/fmnist/",
    ]
    # A wrong file already at the destination is set aside and not replaced by anything bad.
    dest.mkdir()
    (dest / FIRST).write_bytes(b"an old, wrong file")

    with pytest.raises(download.DownloadError) as failure:
        download.download_all(dest, mirrors, sums, timeout=10)

    message = str(failure.value)
    assert f"could not fetch {FIRST} from any of 6 mirror(s)" in message
    assert "data.mirrors" in message  # where to change them
    assert "air-gapped" in message  # the offline hint
    lines = [line for line in message.splitlines() if line.startswith("  - ")]
    assert len(lines) == 6
    expected = [
        (f"{mirror.url('missing')}{FIRST}", "HTTP 404"),
        (f"http://127.0.0.1:{dead_port}/{FIRST}", "cannot connect"),
        (f"{mirror.url('corrupt')}{FIRST}", "MD5 mismatch"),
        (f"{mirror.url('truncated')}{FIRST}", "MD5 mismatch"),
        (str(empty_folder / FIRST), "no such file"),
        ("ftp://example.invalid/fmnist/", "unsupported URL scheme"),
    ]
    for line, (where, why) in zip(lines, expected):
        assert where in line and why in line, line
    # Truncated: the message says how many bytes arrived (half of the file).
    half = (published[0] / FIRST).stat().st_size // 2
    assert f"({half} bytes," in lines[3]

    assert not (dest / FIRST).exists()
    assert (dest / f"{FIRST}.bad-md5").read_bytes() == b"an old, wrong file"
    assert leftovers(dest) == []
    assert sorted(p.name for p in dest.iterdir()) == [f"{FIRST}.bad-md5"]


def test_missing_md5_is_an_error(dest, sums):
    del sums[NAMES[2]]
    with pytest.raises(download.DownloadError) as failure:
        download.download_all(dest, ["/nowhere"], sums)
    assert NAMES[2] in str(failure.value)
    assert "data.md5" in str(failure.value)


# ------------------------------------------------------------------ local mirrors


def test_local_folder_mirror(published, sums, dest, tmp_path, capsys):
    download.download_all(dest, [str(tmp_path / "absent"), str(published[0])], sums)
    assert_complete(dest, sums)
    out = capsys.readouterr().out
    assert out.count("no such file") == 4
    assert out.count(f"fetched from {published[0]}/") == 4


def test_file_url_mirror(published, sums, dest, capsys):
    url = published[0].as_uri()
    assert url.startswith("file:///")
    download.download_all(dest, [url], sums)
    assert_complete(dest, sums)
    assert capsys.readouterr().out.count("MD5 OK") == 4


def test_file_url_with_escaped_characters(published, sums, dest, tmp_path):
    spaced = tmp_path / "shared data%"
    shutil.copytree(published[0], spaced)
    url = spaced.as_uri()
    assert "%20" in url and "%25" in url
    download.download_all(dest, [url + "/"], sums)
    assert_complete(dest, sums)


def test_torchvision_layout_mirror(published, sums, dest, tmp_path, capsys):
    root = tmp_path / "torchvision-data"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in NAMES:
        shutil.copy2(published[0] / name, raw / name)
    # torchvision also keeps the unpacked files next to the .gz ones; they are not used.
    (raw / "train-images-idx3-ubyte").write_bytes(b"unpacked")

    download.download_all(dest, [str(root)], sums)

    assert_complete(dest, sums)
    assert capsys.readouterr().out.count(f"fetched from {raw}/") == 4


# ------------------------------------------------------------- existing files


def test_existing_file_with_right_md5_is_kept(mirror, published, sums, dest, capsys):
    dest.mkdir()
    kept = dest / NAMES[1]
    shutil.copy2(published[0] / NAMES[1], kept)
    os.utime(kept, (1_000_000_000, 1_000_000_000))
    inode = kept.stat().st_ino

    download.download_all(dest, [mirror.url("good")], sums, timeout=10)

    assert_complete(dest, sums)
    assert NAMES[1] not in requested(mirror, "good")
    assert requested(mirror, "good") == [NAMES[0], NAMES[2], NAMES[3]]
    assert kept.stat().st_ino == inode
    assert kept.stat().st_mtime == 1_000_000_000
    assert f"{kept}: already present, MD5 OK" in capsys.readouterr().out


def test_second_download_fetches_nothing(mirror, sums, dest):
    download.download_all(dest, [mirror.url("good")], sums, timeout=10)
    first = len(mirror.requests)
    download.download_all(dest, [mirror.url("good")], sums, timeout=10)
    assert first == 4
    assert len(mirror.requests) == 4
    assert_complete(dest, sums)


def test_existing_file_with_wrong_md5_is_moved_aside_and_replaced(mirror, sums, dest, capsys):
    dest.mkdir()
    stale = dest / NAMES[0]
    stale.write_bytes(b"not the file you are looking for")

    download.download_all(dest, [mirror.url("good")], sums, timeout=10)

    assert_complete(dest, sums)
    aside = dest / f"{NAMES[0]}.bad-md5"
    assert aside.read_bytes() == b"not the file you are looking for"
    assert requested(mirror, "good") == NAMES
    assert f"{stale}: wrong MD5, moved aside to {aside}" in capsys.readouterr().out


# ---------------------------------------------------------------------------- CLI


def run_cli(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, str(DOWNLOAD_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level module names from `python -X importtime` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_cli_help_exits_zero():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--dest", "--mirror", "--md5", "--md5-file", "--timeout"):
        assert option in result.stdout


def test_cli_downloads_with_md5_file_and_does_not_import_torch(mirror, published, dest):
    root, sums = published
    result = run_cli(
        "--dest",
        str(dest),
        "--mirror",
        mirror.url("missing"),
        "--mirror",
        mirror.url("good"),
        "--md5-file",
        str(root / "MD5SUMS"),
        "--timeout",
        "10",
        importtime=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete(dest, sums)
    assert result.stdout.count("MD5 OK") == 4
    assert result.stdout.count("HTTP 404") == 4
    modules = imported_modules(result.stderr)
    assert {"fmnist", "numpy", "urllib"} <= modules  # the check itself works
    assert "torch" not in modules
    assert "torchvision" not in modules


def test_cli_md5_pairs_override_official_sums(published, dest):
    root, sums = published
    pairs = [arg for name in NAMES for arg in ("--md5", f"{name}={sums[name].upper()}")]
    result = run_cli("--dest", str(dest), "--mirror", str(root), *pairs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_complete(dest, sums)


def test_cli_without_md5_file_expects_official_sums(published, dest):
    # The synthetic files do not have the official sums: refused, nothing left behind.
    result = run_cli("--dest", str(dest), "--mirror", str(published[0]))
    assert result.returncode == 1
    assert "MD5 mismatch" in result.stderr + result.stdout
    assert settings.defaults()["data"]["md5"][FIRST] in result.stdout
    assert list(dest.iterdir()) == []


def test_cli_all_mirrors_fail(mirror, published, dest, dead_port):
    dead = f"http://127.0.0.1:{dead_port}/"
    result = run_cli(
        "--dest",
        str(dest),
        "--mirror",
        dead,
        "--mirror",
        mirror.url("corrupt"),
        "--md5-file",
        str(published[0] / "MD5SUMS"),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"could not fetch {FIRST} from any of 2 mirror(s) (config key data.mirrors)" in (
        result.stderr
    )
    assert f"{dead}{FIRST}: cannot connect" in result.stderr
    assert f"{mirror.url('corrupt')}{FIRST}: MD5 mismatch" in result.stderr
    assert list(dest.iterdir()) == []


def test_cli_rejects_malformed_md5_pair(dest):
    result = run_cli("--dest", str(dest), "--md5", f"{FIRST}=abc")
    assert result.returncode != 0
    assert "NAME=32-hex-digit-sum" in result.stderr
    assert not dest.exists() or list(dest.iterdir()) == []
