"""Download the dataset's files from the first mirror that serves verified content.

Content, not location, is the identity of data: a file is accepted from any mirror
(HTTP(S), file:// or a plain directory) when the SHA-256 of its decompressed bytes
matches the one pinned in dataset.yaml, and only then written (atomically) to disk.

A mirror is untrusted, so every download is bounded while it streams, never checked after:
- time: data.timeout_s covers one file's whole transfer, connecting included. HTTP is read
  in a worker thread, so neither a slow DNS lookup nor a drip-feed can outlast it;
- content: the gzip stream is decompressed as it arrives, and its IDX header says how many
  bytes it holds (at most MAX_CONTENT). More than that is refused at once, so a
  decompression bomb costs milliseconds, and bytes that are not gzip fail on the first chunk;
- bytes: the compressed stream may not exceed the content by more than SLACK (zlib's deflate
  adds at most 0.03% to incompressible data), so little more than the content reaches the disk;
- files: a directory mirror serves regular files only; devices, FIFOs and symlinks leading
  out of the mirror are refused before anything is read.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import queue
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..atomic import atomic_path
from ..errors import UserError
from ..params import DataConfig, DataFile, Dataset
from .idx import data_length, read_header

MIRROR_ENV = "MNISTPIPE_MIRROR"
CHUNK = 1 << 16
MAX_CONTENT = 256 << 20  # bytes one IDX file may hold; MNIST's largest holds 47 MB
SLACK = 256 << 10  # gzip bytes beyond the content: headers, block overheads, the trailer
HEAD_WINDOW = 2 * CHUNK  # gzip bytes within which the IDX header must appear (real files: the first 100)
URL_SCHEMES = ("http", "https", "file")


class MirrorFailure(Exception):
    """One mirror could not deliver one file. `retry` says whether trying again may help."""

    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.retry = retry


class Deadline:
    """The time one attempt at one file may take, from connecting to the last byte."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; MirrorFailure once there are none."""
        left = self.end - time.monotonic()
        if left <= 0:
            # Not retried: a mirror that needs longer would need it again.
            raise MirrorFailure(f"timed out: the file was not complete within {self.seconds:g} s "
                                "(data.timeout_s, the limit on each file's whole transfer: raise it "
                                "for a slow connection)", retry=False)
        return left


def mirror_list(dataset: Dataset) -> list[str]:
    """The mirrors to try: MNISTPIPE_MIRROR if set, else dataset.yaml's. Unsupported schemes are a UserError."""
    override = os.environ.get(MIRROR_ENV, "").strip()
    mirrors, origin = ([override], MIRROR_ENV) if override else (list(dataset.mirrors), "mirrors in dataset.yaml")
    for mirror in mirrors:
        try:
            _scheme(mirror)
        except MirrorFailure as exc:
            raise UserError(f"{origin}: {mirror!r}: {exc}") from None
    return mirrors


def _scheme(mirror: str) -> str:
    """'http', 'https' or 'file' (a plain directory too); MirrorFailure for any other scheme."""
    scheme = urllib.parse.urlparse(mirror).scheme.lower()
    if len(scheme) <= 1:  # no scheme, or a Windows drive letter
        return "file"
    if scheme not in URL_SCHEMES:
        raise MirrorFailure(f"unsupported URL scheme {scheme}://; use an http://, https:// or file:// URL, "
                            "or a directory", retry=False)
    return scheme


def file_url(mirror: str, name: str) -> str:
    """URL of `name` on `mirror`; a mirror without a scheme is a local directory."""
    if len(urllib.parse.urlparse(mirror).scheme) > 1:
        return mirror.rstrip("/") + "/" + name
    return (Path(os.path.realpath(Path(mirror).expanduser())) / name).as_uri()


def _local_root(mirror: str) -> Path:
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme.lower() == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(mirror).expanduser()


def _chunks(mirror: str, name: str, timeout: float, deadline: Deadline, progress: bool) -> Iterator[bytes]:
    """The bytes of `name` on `mirror`, as they arrive."""
    if _scheme(mirror) == "file":
        return _file_chunks(_local_root(mirror), name, deadline)
    return _http_chunks(file_url(mirror, name), timeout, deadline, progress)


# --- local files -------------------------------------------------------------------------------

def _file_chunks(root: Path, name: str, deadline: Deadline | None, confined: bool = True) -> Iterator[bytes]:
    """The bytes of the regular file `root/name`; if `confined`, a symlink may lead within `root` only."""
    path, flags = root / name, 0
    if confined:
        # realpath, not resolve(): a symlink loop stays a link, which O_NOFOLLOW then refuses
        path, flags = Path(os.path.realpath(path)), getattr(os, "O_NOFOLLOW", 0)
        if not path.is_relative_to(os.path.realpath(root)):
            raise MirrorFailure(f"a symlink leading out of the mirror (to {path}); put the file itself "
                                "in the mirror directory", retry=False)
    with os.fdopen(_open_regular(path, flags), "rb", buffering=0) as f:
        while True:
            if deadline is not None:
                deadline.left()
            try:
                chunk = f.read(CHUNK)
            except OSError as exc:
                raise MirrorFailure(f"read failed ({exc.strerror})", retry=True) from None
            if not chunk:
                return
            yield chunk


def _open_regular(path: Path, flags: int = 0) -> int:
    """Open without blocking (a FIFO would wait for a writer) and refuse all but regular files."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | flags)
    except FileNotFoundError:
        raise MirrorFailure("no such file", retry=False) from None
    except OSError as exc:
        raise MirrorFailure(f"cannot open ({exc.strerror})", retry=False) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                 stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket"}
        raise MirrorFailure(f"not a regular file but {kinds.get(stat.S_IFMT(mode), 'a special file')}",
                            retry=False)
    return fd


# --- HTTP --------------------------------------------------------------------------------------

def _http_chunks(url: str, timeout: float, deadline: Deadline, progress: bool) -> Iterator[bytes]:
    """Read in a worker thread, so that the deadline holds however the server (or DNS) stalls.

    The worker's first item is the announced length (-1: none), then chunks, then None; or an
    exception. A worker left stuck in a read ends within `timeout`, its socket's own limit.
    """
    items: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    threading.Thread(target=_http_worker, args=(url, timeout, items, stop), daemon=True).start()
    bar = None
    try:
        while True:
            try:
                item = items.get(timeout=deadline.left())
            except queue.Empty:
                continue  # deadline.left() raises on the next turn
            if isinstance(item, Exception):
                raise item
            if item is None:
                return
            if isinstance(item, int):
                bar = _progress_bar(url, item if item >= 0 else None) if progress else None
                continue
            if bar is not None:
                bar.update(len(item))
            yield item
    finally:
        stop.set()
        if bar is not None:
            bar.close()


def _http_worker(url: str, timeout: float, items: queue.Queue, stop: threading.Event) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                items.put(item, timeout=0.1)
                return True
        return False

    request = urllib.request.Request(url, headers={"User-Agent": "mnistpipe"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else -1
            received = 0
            if not put(total):
                return
            while chunk := response.read1(CHUNK):  # read1: what has arrived, not a full buffer
                received += len(chunk)
                if not put(chunk):
                    return
        if total >= 0 and received != total:
            put(MirrorFailure(f"truncated: got {received} of {total} bytes", retry=True))
            return
        put(None)
    except Exception as exc:  # noqa: BLE001 (every failure goes to the reader, which reports it)
        put(_http_failure(exc, timeout))


def _http_failure(exc: Exception, timeout: float) -> MirrorFailure:
    if isinstance(exc, urllib.error.HTTPError):
        return MirrorFailure(f"HTTP {exc.code} {exc.reason}", retry=exc.code >= 500)
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return MirrorFailure("connection refused", retry=True)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return MirrorFailure(f"timed out after {timeout:g} s", retry=True)
        return MirrorFailure(f"unreachable ({reason})", retry=True)
    if isinstance(exc, TimeoutError):
        return MirrorFailure(f"stalled: no data for {timeout:g} s", retry=True)
    if isinstance(exc, (http.client.HTTPException, ConnectionError, OSError)):
        return MirrorFailure(f"transfer broken ({type(exc).__name__}: {exc})", retry=True)
    return MirrorFailure(f"unusable response ({type(exc).__name__}: {exc})", retry=False)


# --- verification while streaming --------------------------------------------------------------

class _Source:
    """The gzip bytes for GzipFile, as they arrive: counted against `cap`, copied to `sink`,
    the first ones kept to say what a non-gzip file was."""

    def __init__(self, chunks: Iterator[bytes], sink: BinaryIO | None):
        self.chunks, self.sink = chunks, sink
        self.buffer = memoryview(b"")
        self.count = 0
        self.head = b""
        self.cap = HEAD_WINDOW  # until the IDX header says how large the content is
        self.over = f"no IDX header in the first {HEAD_WINDOW} bytes"

    def read(self, size: int = -1) -> bytes:
        """`size` bytes, fewer only at the end, as from a file (gzip reads its header so)."""
        if size is None or size < 0:
            size = max(len(self.buffer), 1)
        if len(self.buffer) >= size:
            out, self.buffer = self.buffer[:size], self.buffer[size:]
            return bytes(out)
        parts, self.buffer = [bytes(self.buffer)], memoryview(b"")
        missing = size - len(parts[0])
        while missing > 0 and (chunk := self._next()):
            parts.append(chunk[:missing])
            self.buffer = memoryview(chunk)[missing:]
            missing -= len(parts[-1])
        return b"".join(parts)

    def _next(self) -> bytes:
        chunk = next(self.chunks, b"")
        self.count += len(chunk)
        if self.count > self.cap:
            raise MirrorFailure(self.over, retry=False)
        if self.sink is not None:
            self.sink.write(chunk)
        if len(self.head) < 64:
            self.head = (self.head + chunk)[:64]
        return chunk


def verify_stream(chunks: Iterator[bytes], sha256: str, sink: BinaryIO | None = None) -> None:
    """Check gzip bytes, as they arrive, to hold IDX content of that SHA-256; copy them to `sink`."""
    source = _Source(chunks, sink)
    digest = hashlib.sha256()
    try:
        with gzip.GzipFile(fileobj=source, mode="rb") as content:
            expected, size = _content_length(content, digest)
            source.cap = expected + SLACK
            source.over = f"over {source.cap} bytes of gzip data for {expected} bytes of content"
            while chunk := content.read(CHUNK):
                size += len(chunk)
                if size > expected:
                    raise MirrorFailure(f"more than the {expected} bytes its IDX header declares: "
                                        "a corrupt file or a decompression bomb", retry=False)
                if size == expected:  # only the gzip trailer (and zero padding) may follow
                    source.cap = min(source.cap, source.count + SLACK)
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        head = source.head.lstrip().lower()
        kind = "an HTML/text page" if head.startswith((b"<", b"{")) else "not valid gzip"
        raise MirrorFailure(f"{kind}, not a gzip file ({exc})", retry=False) from None
    if size < expected:
        raise MirrorFailure(f"content truncated: {size} of the {expected} bytes its IDX header declares",
                            retry=False)
    if digest.hexdigest() != sha256:
        raise MirrorFailure(f"checksum mismatch: decompressed sha256 {digest.hexdigest()}, expected {sha256}",
                            retry=False)


def _content_length(content: BinaryIO, digest) -> tuple[int, int]:
    """Read the IDX header (into `digest`); return the whole content's length and the header's."""
    head = content.read(4)
    if len(head) == 4:
        head += content.read(4 * head[3])
    digest.update(head)
    try:
        header, shape = read_header(head, "the decompressed content")
    except UserError as exc:
        raise MirrorFailure(str(exc), retry=False) from None
    length = header + data_length(shape)
    if length > MAX_CONTENT:
        raise MirrorFailure(f"its IDX header declares {length} bytes of content {shape}, more than the "
                            f"{MAX_CONTENT} bytes fetch accepts", retry=False)
    return length, len(head)


# --- the files ---------------------------------------------------------------------------------

def fetch_file(spec: DataFile, mirrors: list[str], dest_dir: Path, timeout: float,
               retries: int, progress: bool = True) -> str:
    """Put a verified `spec.name` into `dest_dir`; return the mirror that served it."""
    dest = dest_dir / spec.name
    failures: list[str] = []
    for mirror in mirrors:
        url = file_url(mirror, spec.name)
        for attempt in range(retries + 1):
            try:
                # atomic_path removes the temporary file on every failure, so nothing unverified stays
                with atomic_path(dest) as tmp, open(tmp, "wb") as sink, contextlib.closing(
                        _chunks(mirror, spec.name, timeout, Deadline(timeout), progress)) as chunks:
                    verify_stream(chunks, spec.sha256, sink)
                return mirror
            except MirrorFailure as failure:
                if not failure.retry or attempt == retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    failures.append(f"  - {url}: {failure}{tries}")
                    break
                time.sleep(min(0.25 * 2**attempt, 4.0))
    raise UserError(
        f"could not fetch {spec.name} from any mirror:\n" + "\n".join(failures) +
        f"\nNothing unverified was written to {dest_dir}/. Check your connection, set "
        f"{MIRROR_ENV} to a directory or URL holding the files, or fix the mirrors in dataset.yaml.")


def fetch_dataset(dataset: Dataset, config: DataConfig, dest_dir: Path, progress: bool = True) -> None:
    """Fetch every file of `dataset`, with params' time limit and retries; files already present
    and verified are kept.

    Every present file is checked before anything is downloaded, so a failed download of
    one file never leaves another, unverified one behind.
    """
    mirrors = mirror_list(dataset)
    dest_dir.mkdir(parents=True, exist_ok=True)
    missing = []
    for spec in dataset.files.values():
        dest = dest_dir / spec.name
        if dest.exists() and _verifies(dest, spec):
            print(f"{spec.name}: present and verified", file=sys.stderr)
            continue
        dest.unlink(missing_ok=True)  # never leave an unverified file where a later stage reads it
        missing.append(spec)
    for spec in missing:
        used = fetch_file(spec, mirrors, dest_dir, config.timeout_s, config.retries, progress)
        print(f"{spec.name}: verified, from {used}", file=sys.stderr)
        mirrors = [used] + [m for m in mirrors if m != used]  # the mirror that worked goes first


def _verifies(path: Path, spec: DataFile) -> bool:
    """Whether a present file holds the pinned content (a symlink into DVC's cache is fine)."""
    try:
        with contextlib.closing(_file_chunks(path.parent, path.name, None, confined=False)) as chunks:
            verify_stream(chunks, spec.sha256)
        return True
    except MirrorFailure:
        return False


def _progress_bar(url: str, total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                file=sys.stderr, disable=None, leave=False)
