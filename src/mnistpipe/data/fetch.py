"""Download the dataset's files from the first mirror that serves verified content.

Content, not location, is the identity of data: a file is accepted from any mirror
(HTTP(S), file:// or a plain directory) when the SHA-256 of its decompressed bytes
matches the one pinned in params, and only then written (atomically) to disk.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from ..atomic import atomic_path
from ..errors import UserError
from ..params import DataConfig, DataFile

MIRROR_ENV = "MNISTPIPE_MIRROR"
CHUNK = 1 << 16


class MirrorFailure(Exception):
    """One mirror could not deliver one file. `retry` says whether trying again may help."""

    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.retry = retry


def mirror_list(config: DataConfig) -> list[str]:
    """The mirrors to try: MNISTPIPE_MIRROR if set, else data.mirrors."""
    override = os.environ.get(MIRROR_ENV, "").strip()
    return [override] if override else list(config.mirrors)


def file_url(mirror: str, name: str) -> str:
    """URL of `name` on `mirror`; a mirror without a scheme is a local directory."""
    if urllib.parse.urlparse(mirror).scheme in ("http", "https", "file"):
        return mirror.rstrip("/") + "/" + name
    return (Path(mirror).expanduser().resolve() / name).as_uri()


def sha256_of_gzip(path: Path) -> str:
    """SHA-256 of the decompressed content; raises MirrorFailure if it is not gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        head = path.read_bytes()[:64].lstrip().lower()
        kind = "an HTML/text page" if head.startswith((b"<", b"{")) else "not valid gzip"
        raise MirrorFailure(f"{kind}, not a gzip file ({exc})", retry=False) from None
    return digest.hexdigest()


def download(url: str, dest: Path, timeout: float, progress: bool) -> None:
    """Copy `url` to `dest`, checking the length the server announced."""
    request = urllib.request.Request(url, headers={"User-Agent": "mnistpipe"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _progress_bar(url, total) if progress else None
            received = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except urllib.error.HTTPError as exc:
        raise MirrorFailure(f"HTTP {exc.code} {exc.reason}", retry=exc.code >= 500) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, FileNotFoundError):
            raise MirrorFailure("no such file", retry=False) from None
        if isinstance(reason, ConnectionRefusedError):
            raise MirrorFailure("connection refused", retry=True) from None
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise MirrorFailure(f"timed out after {timeout:g} s", retry=True) from None
        raise MirrorFailure(f"unreachable ({reason})", retry=True) from None
    except TimeoutError:
        raise MirrorFailure(f"stalled: no data for {timeout:g} s", retry=True) from None
    except (http.client.HTTPException, ConnectionError, OSError) as exc:
        raise MirrorFailure(f"transfer broken ({type(exc).__name__}: {exc})", retry=True) from None
    if total is not None and received != total:
        raise MirrorFailure(f"truncated: got {received} of {total} bytes", retry=True)


def fetch_file(spec: DataFile, mirrors: list[str], dest_dir: Path, timeout: float,
               retries: int, progress: bool = True) -> str:
    """Put a verified `spec.name` into `dest_dir`; return the mirror that served it."""
    dest = dest_dir / spec.name
    failures: list[str] = []
    for mirror in mirrors:
        url = file_url(mirror, spec.name)
        for attempt in range(retries + 1):
            try:
                with atomic_path(dest) as tmp:
                    download(url, tmp, timeout, progress)
                    actual = sha256_of_gzip(tmp)
                    if actual != spec.sha256:
                        raise MirrorFailure(f"checksum mismatch: decompressed sha256 {actual}, "
                                            f"expected {spec.sha256}", retry=False)
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
        f"{MIRROR_ENV} to a directory or URL holding the files, or fix data.mirrors in params.yaml.")


def fetch_dataset(config: DataConfig, dest_dir: Path, progress: bool = True) -> None:
    """Fetch every file of the dataset; files already present and verified are kept.

    Every present file is checked before anything is downloaded, so a failed download of
    one file never leaves another, unverified one behind.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    missing = []
    for spec in config.files.values():
        dest = dest_dir / spec.name
        if dest.exists() and _verifies(dest, spec):
            print(f"{spec.name}: present and verified", file=sys.stderr)
            continue
        dest.unlink(missing_ok=True)  # never leave an unverified file where a later stage reads it
        missing.append(spec)
    mirrors = mirror_list(config)
    for spec in missing:
        used = fetch_file(spec, mirrors, dest_dir, config.timeout_s, config.retries, progress)
        print(f"{spec.name}: verified, from {used}", file=sys.stderr)
        mirrors = [used] + [m for m in mirrors if m != used]  # the mirror that worked goes first


def _verifies(path: Path, spec: DataFile) -> bool:
    try:
        return sha256_of_gzip(path) == spec.sha256
    except MirrorFailure:
        return False


def _progress_bar(url: str, total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                file=sys.stderr, disable=None, leave=False)
