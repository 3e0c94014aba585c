"""Fetching (mnistpipe.data.fetch) from directory mirrors and from a loopback HTTP server that
misbehaves on purpose: every failure must name the mirror, the file and the reason, and leave
nothing (not even a temporary file) behind."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import multiprocessing
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from mnistpipe.data.fetch import CHUNK, MIRROR_ENV, fetch_dataset, fetch_file, file_url, mirror_list
from mnistpipe.errors import UserError
from mnistpipe.params import DataFile, parse_dataset, parse_params

from conftest import FILES, REPO, tiny_dataset_raw, tiny_params_raw, write_dataset, write_synthetic_mirror

TIMEOUT = 0.5  # seconds; every stall below lasts longer than this
STALL_S = 10.0  # upper bound; teardown releases stalled handlers at once


# --- a loopback HTTP server with per-route behaviour ---------------------------------------------

class Server:
    """ThreadingHTTPServer on 127.0.0.1:<free port>; the first path segment picks a behaviour.

    `url(route)` is a mirror URL; a request for <route>/<name> calls
    `routes[route](handler, name)`. `hits` counts requests per (route, name).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files  # name -> .gz bytes of the good dataset
        self.routes: dict[str, Callable] = {}
        self.hits: Counter = Counter()
        self.release = threading.Event()  # set at teardown: stalled handlers return at once
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                route, _, name = self.path.lstrip("/").partition("/")
                with server.lock:
                    server.hits[(route, name)] += 1
                    count = server.hits[(route, name)]
                behaviour = server.routes.get(route)
                if behaviour is None:
                    self.send_error(404)
                    return
                try:
                    behaviour(self, name, count)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first: expected for stalls

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}/{route}/"

    def requests(self, route: str) -> int:
        return sum(n for (r, _), n in self.hits.items() if r == route)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def send_bytes(handler, body: bytes, status: int = 200, content_type: str = "application/gzip",
               length: int | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


# Behaviours: (handler, file name, how many times this route+name was requested so far).

def good(server: Server):
    def serve(handler, name, count):
        if name not in server.files:
            handler.send_error(404)
            return
        send_bytes(handler, server.files[name])
    return serve


def not_found(handler, name, count):
    handler.send_error(404, "Not Found")


def html_200(handler, name, count):
    page = b"<!DOCTYPE html>\n<html><head><title>Error</title></head><body>Try later</body></html>\n"
    send_bytes(handler, page, content_type="text/html")


def wrong_content(handler, name, count):
    """Valid gzip, but of other bytes: only the checksum can tell."""
    send_bytes(handler, gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02\x07\x07", mtime=0))


def truncated(server: Server):
    def serve(handler, name, count):
        body = server.files[name]
        handler.send_response(200)
        handler.send_header("Content-Type", "application/gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True
    return serve


def stall_before_headers(server: Server):
    def serve(handler, name, count):
        server.release.wait(STALL_S)
    return serve


def stall_mid_body(server: Server):
    def serve(handler, name, count):
        body = server.files[name]
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:100])
        handler.wfile.flush()
        server.release.wait(STALL_S)
    return serve


def flaky(server: Server, failures: int):
    """HTTP 500 for the first `failures` requests of each file, then the real file."""
    def serve(handler, name, count):
        if count <= failures:
            handler.send_error(500, "Internal Server Error")
            return
        send_bytes(handler, server.files[name])
    return serve


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_mirror(tmp_path_factory):
    """conftest's fixture, made once per module (no test here writes into the mirror)."""
    mirror = tmp_path_factory.mktemp("fetch") / "mirror"
    return mirror, write_synthetic_mirror(mirror)


@pytest.fixture(autouse=True)
def no_mirror_override(monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def server(synthetic_mirror):
    mirror, _ = synthetic_mirror
    files = {name: (mirror / name).read_bytes() for name in FILES.values()}
    with Server(files) as srv:
        srv.routes.update({
            "good": good(srv), "404": not_found, "html": html_200, "wrong": wrong_content,
            "truncated": truncated(srv), "stall": stall_before_headers(srv),
            "stallbody": stall_mid_body(srv), "flaky": flaky(srv, failures=1),
        })
        yield srv


@pytest.fixture
def refused_url() -> str:
    """A loopback URL nobody listens on: bind a port, then close it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/"


def make_config(checksums: dict[str, str], mirrors: list[str], retries: int = 0, timeout: float = TIMEOUT):
    """fetch_dataset's dataset (on `mirrors`) and data params, as a pair."""
    dataset = tiny_dataset_raw(checksums)
    dataset["mirrors"] = mirrors
    raw = tiny_params_raw()
    raw["data"]["retries"] = retries
    raw["data"]["timeout_s"] = timeout
    return parse_dataset(dataset), parse_params(raw).data


def spec_for(checksums: dict[str, str], key: str = "train_labels") -> DataFile:
    return DataFile(name=FILES[key], sha256=checksums[key])


def assert_clean(dest: Path, name: str) -> None:
    """No file of that name and no temporary leftovers in `dest`."""
    if not dest.exists():
        return
    left = sorted(p.name for p in dest.iterdir())
    assert name not in left, left
    assert not [n for n in left if n.endswith(".tmp") or n.startswith(".")], left


def assert_same_files(dest: Path, mirror: Path) -> None:
    for name in FILES.values():
        assert (dest / name).read_bytes() == (mirror / name).read_bytes(), name
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES.values())


# --- URL building and mirror selection --------------------------------------------------------

def test_file_url_http_and_directory(tmp_path):
    assert file_url("http://h/x/", "a.gz") == "http://h/x/a.gz"
    assert file_url("https://h/x", "a.gz") == "https://h/x/a.gz"
    assert file_url(str(tmp_path), "a.gz") == (tmp_path / "a.gz").as_uri()
    assert file_url(tmp_path.as_uri(), "a.gz") == (tmp_path / "a.gz").as_uri()


def test_mirror_env_overrides_params(synthetic_mirror, monkeypatch):
    _, checksums = synthetic_mirror
    dataset, _ = make_config(checksums, ["http://a.invalid/", "http://b.invalid/"])
    assert mirror_list(dataset) == ["http://a.invalid/", "http://b.invalid/"]
    monkeypatch.setenv(MIRROR_ENV, "  /some/dir  ")
    assert mirror_list(dataset) == ["/some/dir"]
    monkeypatch.setenv(MIRROR_ENV, "")
    assert mirror_list(dataset) == ["http://a.invalid/", "http://b.invalid/"]


# --- success -----------------------------------------------------------------------------------

def test_fetch_dataset_from_http_mirror(server, synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    dest = tmp_path / "raw"
    fetch_dataset(*make_config(checksums, [server.url("good")]), dest, progress=False)
    assert_same_files(dest, mirror)
    for key, name in FILES.items():
        assert hashlib.sha256(gzip.decompress((dest / name).read_bytes())).hexdigest() == checksums[key]
        assert server.hits[("good", name)] == 1


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_fetch_dataset_from_directory_mirror(synthetic_mirror, tmp_path, form):
    mirror, checksums = synthetic_mirror
    where = str(mirror) if form == "path" else mirror.as_uri()
    dest = tmp_path / "raw"
    fetch_dataset(*make_config(checksums, [where]), dest, progress=False)
    assert_same_files(dest, mirror)


def test_fetch_file_returns_serving_mirror(server, synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums)
    used = fetch_file(spec, [server.url("good")], tmp_path / "raw", TIMEOUT, 0, progress=False)
    assert used == server.url("good")
    assert (tmp_path / "raw" / spec.name).read_bytes() == (mirror / spec.name).read_bytes()


def test_env_var_overrides_broken_params_mirrors(server, synthetic_mirror, tmp_path, monkeypatch,
                                                  refused_url):
    mirror, checksums = synthetic_mirror
    config = make_config(checksums, [refused_url, server.url("404")])
    monkeypatch.setenv(MIRROR_ENV, server.url("good"))
    fetch_dataset(*config, tmp_path / "raw", progress=False)
    assert_same_files(tmp_path / "raw", mirror)
    assert server.requests("404") == 0  # data.mirrors was not consulted


def test_env_var_directory_override(synthetic_mirror, tmp_path, monkeypatch, refused_url):
    mirror, checksums = synthetic_mirror
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    fetch_dataset(*make_config(checksums, [refused_url]), tmp_path / "raw", progress=False)
    assert_same_files(tmp_path / "raw", mirror)


def test_falls_over_to_second_mirror_and_keeps_using_it(server, synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    config = make_config(checksums, [server.url("404"), server.url("good")])
    fetch_dataset(*config, tmp_path / "raw", progress=False)
    assert_same_files(tmp_path / "raw", mirror)
    # The bad mirror was tried for the first file only: the one that worked goes first after that.
    assert server.requests("404") == 1
    assert server.requests("good") == 4


@pytest.mark.parametrize("bad", ["404", "html", "wrong", "truncated", "stall", "refused"])
def test_fetch_file_falls_over_from_each_failure(server, synthetic_mirror, tmp_path, refused_url, bad):
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums)
    first = refused_url if bad == "refused" else server.url(bad)
    used = fetch_file(spec, [first, server.url("good")], tmp_path / "raw", TIMEOUT, 0, progress=False)
    assert used == server.url("good")
    assert (tmp_path / "raw" / spec.name).read_bytes() == (mirror / spec.name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [spec.name]


def test_server_error_then_success_on_retry(server, synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums)
    used = fetch_file(spec, [server.url("flaky")], tmp_path / "raw", TIMEOUT, retries=1, progress=False)
    assert used == server.url("flaky")
    assert server.hits[("flaky", spec.name)] == 2  # one 500, one success
    assert (tmp_path / "raw" / spec.name).read_bytes() == (mirror / spec.name).read_bytes()


def test_server_error_without_retries_fails(server, synthetic_mirror, tmp_path):
    _, checksums = synthetic_mirror
    spec = spec_for(checksums)
    with pytest.raises(UserError, match="HTTP 500"):
        fetch_file(spec, [server.url("flaky")], tmp_path / "raw", TIMEOUT, retries=0, progress=False)
    assert server.hits[("flaky", spec.name)] == 1
    assert_clean(tmp_path / "raw", spec.name)


def test_permanent_failures_are_not_retried(server, synthetic_mirror, tmp_path):
    """404, an HTML page and a checksum mismatch will not improve: one request each."""
    _, checksums = synthetic_mirror
    spec = spec_for(checksums)
    with pytest.raises(UserError):
        fetch_file(spec, [server.url("404"), server.url("html"), server.url("wrong")],
                   tmp_path / "raw", TIMEOUT, retries=2, progress=False)
    assert [server.requests(r) for r in ("404", "html", "wrong")] == [1, 1, 1]


def test_transient_failure_retried_then_reported(server, synthetic_mirror, tmp_path):
    _, checksums = synthetic_mirror
    spec = spec_for(checksums)
    with pytest.raises(UserError, match=r"truncated.*\(after 2 attempts\)"):
        fetch_file(spec, [server.url("truncated")], tmp_path / "raw", TIMEOUT, retries=1, progress=False)
    assert server.hits[("truncated", spec.name)] == 2
    assert_clean(tmp_path / "raw", spec.name)


def test_present_verified_files_are_kept(server, synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    dest = tmp_path / "raw"
    config = make_config(checksums, [server.url("good")])
    fetch_dataset(*config, dest, progress=False)
    fetch_dataset(*config, dest, progress=False)
    assert all(server.hits[("good", name)] == 1 for name in FILES.values())
    assert_same_files(dest, mirror)


def test_present_corrupt_file_is_replaced(server, synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    dest = tmp_path / "raw"
    dest.mkdir()
    name = FILES["test_labels"]
    (dest / name).write_bytes((mirror / name).read_bytes()[:-10])  # truncated earlier download
    fetch_dataset(*make_config(checksums, [server.url("good")]), dest, progress=False)
    assert server.hits[("good", name)] == 1
    assert_same_files(dest, mirror)


# --- failure: one clear message, nothing written ----------------------------------------------

@pytest.mark.parametrize("route, reason", [
    ("404", "HTTP 404"),
    ("html", "HTML"),
    ("wrong", "checksum mismatch"),
    ("truncated", "truncated"),
    ("stall", "timed out|stalled"),
    ("stallbody", "stalled|timed out"),
    ("flaky", "HTTP 500"),
])
def test_single_mirror_failure_message_and_no_leftovers(server, synthetic_mirror, tmp_path, route, reason):
    _, checksums = synthetic_mirror
    spec = spec_for(checksums)
    dest = tmp_path / "raw"
    with pytest.raises(UserError) as info:
        fetch_file(spec, [server.url(route)], dest, TIMEOUT, 0, progress=False)
    message = str(info.value)
    assert spec.name in message
    assert server.url(route) + spec.name in message
    assert any(r in message for r in reason.split("|")), message
    assert MIRROR_ENV in message  # the fix is named
    assert_clean(dest, spec.name)


def test_stall_fails_in_about_the_timeout(server, synthetic_mirror, tmp_path):
    _, checksums = synthetic_mirror
    spec = spec_for(checksums)
    start = time.monotonic()
    with pytest.raises(UserError, match="stalled|timed out"):
        fetch_file(spec, [server.url("stallbody")], tmp_path / "raw", TIMEOUT, 0, progress=False)
    assert time.monotonic() - start < STALL_S / 2


def test_connection_refused_message(synthetic_mirror, tmp_path, refused_url):
    _, checksums = synthetic_mirror
    spec = spec_for(checksums)
    with pytest.raises(UserError) as info:
        fetch_file(spec, [refused_url], tmp_path / "raw", TIMEOUT, 0, progress=False)
    message = str(info.value)
    assert refused_url + spec.name in message and "connection refused" in message
    assert_clean(tmp_path / "raw", spec.name)


def test_directory_mirror_missing_file(synthetic_mirror, tmp_path):
    _, checksums = synthetic_mirror
    spec = spec_for(checksums)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as info:
        fetch_file(spec, [str(empty)], tmp_path / "raw", TIMEOUT, 0, progress=False)
    message = str(info.value)
    assert (empty / spec.name).as_uri() in message and "no such file" in message
    assert_clean(tmp_path / "raw", spec.name)


def test_directory_mirror_with_wrong_file(synthetic_mirror, tmp_path):
    """A local copy of other data (here: the images file under the labels' name) is refused."""
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums, "train_labels")
    other = tmp_path / "other"
    other.mkdir()
    (other / spec.name).write_bytes((mirror / FILES["train_images"]).read_bytes())
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch_file(spec, [other.as_uri()], tmp_path / "raw", TIMEOUT, 0, progress=False)
    assert_clean(tmp_path / "raw", spec.name)


def test_all_mirrors_fail_message_names_each(server, synthetic_mirror, tmp_path, refused_url):
    _, checksums = synthetic_mirror
    spec = spec_for(checksums)
    expect = {
        server.url("404"): "HTTP 404",
        server.url("html"): "HTML",
        server.url("wrong"): "checksum mismatch",
        server.url("truncated"): "truncated",
        server.url("stall"): "timed out",
        refused_url: "connection refused",
    }
    dest = tmp_path / "raw"
    with pytest.raises(UserError) as info:
        fetch_file(spec, list(expect), dest, TIMEOUT, 0, progress=False)
    message = str(info.value)
    lines = message.splitlines()
    assert spec.name in lines[0]
    for url, reason in expect.items():
        matching = [line for line in lines if url + spec.name in line]
        assert len(matching) == 1, (url, message)
        assert reason in matching[0] or (reason == "timed out" and "stalled" in matching[0]), message
    assert "Traceback" not in message
    assert_clean(dest, spec.name)


def test_fetch_dataset_all_fail_leaves_dest_empty(server, synthetic_mirror, tmp_path, refused_url):
    _, checksums = synthetic_mirror
    dest = tmp_path / "raw"
    config = make_config(checksums, [server.url("wrong"), refused_url])
    with pytest.raises(UserError) as info:
        fetch_dataset(*config, dest, progress=False)
    message = str(info.value)
    assert server.url("wrong") in message and refused_url in message
    assert list(dest.iterdir()) == []


def test_progress_bar_does_not_break_download(server, synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums, "test_images")
    fetch_file(spec, [server.url("good")], tmp_path / "raw", TIMEOUT, 0, progress=True)
    assert (tmp_path / "raw" / spec.name).read_bytes() == (mirror / spec.name).read_bytes()


@pytest.mark.parametrize("bad", [
    pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
    pytest.param(lambda data: b"<html><body>Not found</body></html>", id="html page"),
    pytest.param(lambda data: gzip.compress(b"\0" * 100), id="wrong checksum"),
    pytest.param(lambda data: b"", id="empty"),
])
@pytest.mark.parametrize("which", ["train_images", "train_labels", "test_labels"])
def test_no_unverified_file_survives_a_failed_fetch(synthetic_mirror, tmp_path, refused_url, bad, which):
    """Whichever present files are bad, and however, a fetch that cannot reach any mirror
    leaves only verified files (the bug: the first bad file aborted the run, later ones stayed)."""
    mirror, checksums = synthetic_mirror
    dest = tmp_path / "raw"
    dest.mkdir()
    for key in ("train_images", which):  # two bad files: the first file and another
        (dest / FILES[key]).write_bytes(bad((mirror / FILES[key]).read_bytes()))
    good = FILES["test_images"]
    (dest / good).write_bytes((mirror / good).read_bytes())
    with pytest.raises(UserError):
        fetch_dataset(*make_config(checksums, [refused_url]), dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == [good]


# --- hostile mirrors: every fetch ends, soon, with bounded disk and memory ---------------------
#
# Each fetch runs in a forked child that the test kills if it outlasts HANG_S: on code without
# the bounds a /dev/zero mirror would otherwise fill the disk until pytest ends.

DEADLINE = 1.0  # data.timeout_s in these tests (30 in params.yaml)
HANG_S = 6.0
PEAK_GROWTH = 32 << 20  # how much one fetch may raise the child's peak RSS
LABELS = 600  # items in the synthetic training labels file

BombPieces = tuple[bytes, bytes, bytes]


def bomb_pieces(idx_header: bytes) -> BombPieces:
    """gzip's start, with `idx_header` as the first content; a deflate block of 1 MiB of zeros, which
    may repeat (a full flush makes it stand alone); and an empty final block. No trailer: fetch must
    stop long before it."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = deflate.compress(idx_header) + deflate.flush(zlib.Z_FULL_FLUSH)
    zeros = deflate.compress(bytes(1 << 20)) + deflate.flush(zlib.Z_FULL_FLUSH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + start, zeros, deflate.flush()


LABELS_BOMB = bomb_pieces(struct.pack(">HBBI", 0, 8, 1, LABELS))
EMPTY_STORED_BLOCK = b"\x00\x00\x00\xff\xff"  # byte-aligned, non-final, no content


def endless(piece_after: Callable[[int], bytes], start: bytes = b""):
    """A body that never ends (no Content-Length: HTTP/1.0 reads to the close)."""
    def serve(handler, name, count):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/gzip")
        handler.end_headers()
        handler.wfile.write(start)
        i = 0
        while not handler.server.release.is_set():
            handler.wfile.write(piece_after(i))
            i += 1
    return serve


def finite_bomb(handler, name, count):
    """4 GiB of zeros behind a header that declares 600 labels: 4 MB on the wire."""
    start, zeros, end = LABELS_BOMB
    body_len = len(start) + 4096 * len(zeros) + len(end)
    handler.send_response(200)
    handler.send_header("Content-Length", str(body_len))
    handler.end_headers()
    handler.wfile.write(start)
    for _ in range(4096):
        handler.wfile.write(zeros)
    handler.wfile.write(end)


def drip(server: Server, every_s: float = 0.1):
    """The real file, announced in full, then a byte every `every_s`: each read succeeds in time."""
    def serve(handler, name, count):
        body = server.files[name]
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for i in range(len(body)):
            handler.wfile.write(body[i:i + 1])
            handler.wfile.flush()
            if server.release.wait(every_s):
                return
    return serve


@pytest.fixture
def hostile(server):
    start, zeros, _ = LABELS_BOMB
    server.httpd.release = server.release
    server.routes.update({
        "zeros": endless(lambda i: bytes(CHUNK)),
        "bomb_endless": endless(lambda i: zeros, start),
        "empty_blocks": endless(lambda i: EMPTY_STORED_BLOCK * 1000, start),
        # A gzip header whose file name (FNAME) never ends
        "endless_name": endless(lambda i: b"a" * CHUNK, b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x02\xff"),
        "bomb": finite_bomb,
        "drip": drip(server),
    })
    return server


def _child(conn, call: Callable[[], None]) -> None:
    """In the forked child: run `call`, measured; report what happened through `conn`."""
    from mnistpipe import atomic as atomic_module
    from mnistpipe.data import fetch as fetch_module

    written: list[int] = []

    @contextlib.contextmanager
    def recording(path):  # the size a temporary file reached, taken just before it is removed
        with atomic_module.atomic_path(path) as tmp:
            try:
                yield tmp
            finally:
                written.append(tmp.stat().st_size if tmp.exists() else 0)

    fetch_module.atomic_path = recording
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    start = time.monotonic()
    try:
        call()
        error = None
    except UserError as exc:
        error = f"UserError: {exc}"
    except BaseException as exc:  # noqa: BLE001 (reported to the test, which fails on it)
        error = "".join(traceback.format_exception(exc))
    seconds = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss  # the child starts at its parent's
    conn.send({"error": error, "seconds": seconds, "peak": peak, "written": max(written, default=0)})


def in_child(call: Callable[[], None], dest: Path) -> dict:
    """Run `call` in a child process killed after HANG_S; what it reported. A child that had to be
    killed may have filled `dest` (on code without the bounds): it is removed."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, call), daemon=True)
    child.start()
    try:
        if not receive.poll(HANG_S):
            child.kill()
            shutil.rmtree(dest, ignore_errors=True)
            pytest.fail(f"still running after {HANG_S} s")
        return receive.recv()
    finally:
        child.kill()
        child.join()


def hostile_fetch(spec: DataFile, mirror: str, dest: Path) -> dict:
    """fetch_file from `mirror`, with retries: 2 as in params.yaml, in a child process."""
    return in_child(lambda: fetch_file(spec, [mirror], dest, DEADLINE, retries=2, progress=False), dest)


def largest_pinned_size(mirror: Path) -> int:
    return max((mirror / name).stat().st_size for name in FILES.values())


def assert_bounded(result: dict, reason: str, dest: Path, spec: DataFile, largest: int) -> None:
    error = result["error"]
    assert error and error.startswith("UserError: "), error  # a clear message, not a traceback
    assert reason in error and "Traceback" not in error, error
    assert result["seconds"] < DEADLINE + 1.5, result
    assert result["written"] <= 2 * largest, result
    assert result["peak"] < PEAK_GROWTH, result
    assert_clean(dest, spec.name)


def directory_mirror(tmp_path: Path, name: str, make: Callable[[Path], None]) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make(mirror / name)
    return mirror


@pytest.mark.parametrize("kind, reason", [
    ("dev_zero_symlink", "a symlink leading out of the mirror (to /dev/zero)"),
    ("fifo", "not a regular file but a FIFO"),
    ("directory", "not a regular file but a directory"),
    ("sparse_zeros", "not valid gzip"),  # 64 MiB of zeros: only the first chunk is read
    ("symlink_loop", "cannot open (Too many levels of symbolic links)"),
])
@pytest.mark.parametrize("form", ["path", "file-url"])
def test_hostile_directory_mirror(synthetic_mirror, tmp_path, kind, reason, form):
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums)
    makers = {
        "dev_zero_symlink": lambda p: p.symlink_to("/dev/zero"),
        "fifo": lambda p: os.mkfifo(p),
        "directory": lambda p: p.mkdir(),
        "sparse_zeros": lambda p: (p.touch(), os.truncate(p, 64 << 20)),
        "symlink_loop": lambda p: p.symlink_to(p.name),
    }
    where = directory_mirror(tmp_path, spec.name, makers[kind])
    result = hostile_fetch(spec, str(where) if form == "path" else where.as_uri(), tmp_path / "raw")
    assert_bounded(result, reason, tmp_path / "raw", spec, largest_pinned_size(mirror))


def test_symlink_within_the_mirror_is_followed(synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums)
    where = directory_mirror(tmp_path, spec.name, lambda p: p.symlink_to(f"store/{spec.name}"))
    (where / "store").mkdir()
    (where / "store" / spec.name).write_bytes((mirror / spec.name).read_bytes())
    fetch_file(spec, [str(where)], tmp_path / "raw", TIMEOUT, 0, progress=False)
    assert (tmp_path / "raw" / spec.name).read_bytes() == (mirror / spec.name).read_bytes()


@pytest.mark.parametrize("route, reason", [
    ("zeros", "not valid gzip"),
    ("bomb_endless", "decompression bomb"),
    ("bomb", "decompression bomb"),
    ("empty_blocks", f"bytes of gzip data for {8 + LABELS} bytes of content"),
    ("endless_name", "no IDX header in the first"),
    ("drip", "timed out: the file was not complete within 1 s"),
])
def test_hostile_http_mirror(hostile, synthetic_mirror, tmp_path, route, reason):
    """With retries: 2, as in params.yaml: none of these is retried."""
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums)
    result = hostile_fetch(spec, hostile.url(route), tmp_path / "raw")
    assert_bounded(result, reason, tmp_path / "raw", spec, largest_pinned_size(mirror))
    assert hostile.hits[(route, spec.name)] == 1


def test_header_declaring_too_much_content(synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums, "train_images")
    start, zeros, end = bomb_pieces(struct.pack(">HBB3I", 0, 8, 3, 2**31, 28, 28))
    where = directory_mirror(tmp_path, spec.name, lambda p: p.write_bytes(start + zeros + end))
    result = hostile_fetch(spec, str(where), tmp_path / "raw")
    assert_bounded(result, "(2147483648, 28, 28), more than the", tmp_path / "raw", spec,
                   largest_pinned_size(mirror))


def test_deadline_covers_directory_mirrors(synthetic_mirror, tmp_path):
    mirror, checksums = synthetic_mirror
    spec = spec_for(checksums, "train_images")
    with pytest.raises(UserError, match="timed out"):
        fetch_file(spec, [str(mirror)], tmp_path / "raw", 1e-9, retries=0, progress=False)
    assert_clean(tmp_path / "raw", spec.name)


@pytest.mark.parametrize("where", ["env", "params"])
def test_unsupported_scheme_is_named(synthetic_mirror, tmp_path, monkeypatch, where):
    _, checksums = synthetic_mirror
    config = make_config(checksums, ["ftp://127.0.0.1/mnist/" if where == "params" else "http://127.0.0.1:9/"])
    if where == "env":
        monkeypatch.setenv(MIRROR_ENV, "ftp://127.0.0.1/mnist/")
    with pytest.raises(UserError) as info:
        fetch_dataset(*config, tmp_path / "raw", progress=False)
    message = str(info.value)
    assert "unsupported URL scheme ftp://" in message, message
    assert (MIRROR_ENV if where == "env" else "mirrors in dataset.yaml") in message, message
    assert not (tmp_path / "raw").exists()


def test_fetch_file_refuses_unsupported_scheme(synthetic_mirror, tmp_path):
    _, checksums = synthetic_mirror
    spec = spec_for(checksums)
    with pytest.raises(UserError, match=r"ftp://h/x/train-labels-idx1-ubyte.gz: unsupported URL scheme ftp://"):
        fetch_file(spec, ["ftp://h/x/"], tmp_path / "raw", TIMEOUT, 0, progress=False)


def test_present_fifo_is_replaced_not_waited_on(server, synthetic_mirror, tmp_path):
    """A FIFO where a verified file should be (data/raw) is removed and fetched again."""
    mirror, checksums = synthetic_mirror
    dest = tmp_path / "raw"
    dest.mkdir()
    os.mkfifo(dest / FILES["train_labels"])
    config = make_config(checksums, [server.url("good")])
    result = in_child(lambda: fetch_dataset(*config, dest, progress=False), dest)
    assert result["error"] is None, result
    assert_same_files(dest, mirror)


def test_fetch_stage_reports_a_hostile_mirror_without_traceback(synthetic_mirror, tmp_path):
    _, checksums = synthetic_mirror
    raw = tiny_params_raw()
    raw["data"]["timeout_s"] = DEADLINE
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    write_dataset(tmp_path, checksums)
    where = directory_mirror(tmp_path, FILES["train_images"], lambda p: os.mkfifo(p))
    env = {**os.environ, MIRROR_ENV: str(where)}
    out = subprocess.run([sys.executable, str(REPO / "stages" / "fetch.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "error: could not fetch train-images-idx3-ubyte.gz" in out.stderr
    assert "not a regular file but a FIFO" in out.stderr and "Traceback" not in out.stderr
    assert list((tmp_path / "data" / "raw").iterdir()) == []
