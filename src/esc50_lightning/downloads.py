"""The one downloader and the one default cache folder.

``fetch(url, dest, ...)`` puts a checked file at ``dest``: it downloads with
``torch.hub.download_url_to_file`` into a temporary file beside ``dest``, checks its size and
sha256, and only then renames it into place, so ``dest`` is the whole, verified file or absent.
A file already at ``dest`` is checked the same way and reused (no second download). Any failure is
one ``UserError`` line naming the URL or file and what to do instead.

``default_cache_dir()`` is ``$ESC50_CACHE``, else ``~/.cache/esc50-lightning`` (``paths.cache_dir``
in the configs): the decode cache, with downloaded weights under ``pretrained/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import socket
import sys
import tempfile
import urllib.error
from collections.abc import Iterator
from pathlib import Path

from esc50_lightning.errors import UserError

log = logging.getLogger(__name__)

# Seconds without a byte before a download gives up (urlopen's default is to wait forever).
TIMEOUT = 60


def default_cache_dir() -> Path:
    """``$ESC50_CACHE``, else ``~/.cache/esc50-lightning``: as ``paths.cache_dir`` in the configs."""
    return Path(os.environ.get("ESC50_CACHE") or Path.home() / ".cache" / "esc50-lightning").expanduser()


def pretrained_dir() -> Path:
    """Where downloaded weights go by default (``${paths.cache_dir}/pretrained`` in the configs)."""
    return default_cache_dir() / "pretrained"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_problem(
    path: Path, sha256: str | None = None, size: int | None = None, min_size: int | None = None
) -> str | None:
    """Why the file at ``path`` is not the expected one, or ``None``. ``sha256`` may be a prefix of
    the digest (torchvision's file names carry its first 8 hex digits)."""
    got = path.stat().st_size
    if size is not None and got != size:
        return f"{got} bytes, expected {size}"
    if min_size is not None and got < min_size:
        return f"only {got} bytes, expected at least {min_size}"
    if sha256 is not None and not (digest := sha256_of(path)).startswith(sha256.lower()):
        return f"sha256 {digest}, expected {sha256.lower()}"
    return None


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub's urlopen takes no timeout: use the socket default, unless one is set already."""
    if socket.getdefaulttimeout() is not None:
        yield
        return
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(None)


def fetch(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    min_size: int | None = None,
    what: str = "file",
    instead: str | None = None,
) -> Path:
    """``dest``, downloaded from ``url`` unless a good copy is there already; checked for its exact
    ``size``, a ``min_size`` floor (an error page or a cut-short download is small) and ``sha256``
    (the full digest or a prefix). ``what`` names the file in messages; ``instead`` tells the user
    what to do when the download fails (default: fetch the URL elsewhere and put it at ``dest``).

    torch.hub keeps whatever arrived of a response cut short: a caller that pins neither ``size``
    nor ``sha256`` gives a ``min_size`` or checks the contents itself (a zip is read whole)."""
    dest = Path(dest).expanduser()
    if dest.is_file():
        problem = file_problem(dest, sha256, size, min_size)
        if problem is None:
            return dest
        raise UserError(f"{dest}: not the expected {what} ({problem}); delete it to download again")
    from torch.hub import download_url_to_file  # here: the cache command needs no torch

    todo = instead or f"download it elsewhere and put it at {dest}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as err:  # a read-only or full cache folder
        raise UserError(f"{dest.parent}: cannot save {what} there ({err.strerror or err}); {todo}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    log.info("Downloading %s from %s", what, url)
    try:
        try:
            with _socket_timeout(TIMEOUT):
                download_url_to_file(url, tmp_name, progress=sys.stderr.isatty())
        except (OSError, ValueError, http.client.HTTPException) as err:  # offline, HTTP 404, bad URL
            raise UserError(f"cannot download {what} from {url} ({_reason(err)}); {todo}") from None
        problem = file_problem(tmp, sha256, size, min_size)
        if problem is not None:
            raise UserError(f"downloaded {url}: not the expected {what} ({problem}); nothing was saved")
        if sha256 is None or len(sha256) < 64:
            got = tmp.stat().st_size
            log.info("%s: %d bytes, sha256 %s (pin it with this)", dest.name, got, sha256_of(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache folder is meant to be shared
        tmp.replace(dest)  # same folder: atomic
    finally:
        tmp.unlink(missing_ok=True)
        # torch.hub writes to "<tmp>.<uuid>.partial" and leaves it behind when the URL is malformed
        for partial in dest.parent.glob(f"{tmp.name}.*.partial"):
            partial.unlink(missing_ok=True)
    return dest


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return str(err)  # "HTTP Error 404: Not Found"
    reason = getattr(err, "reason", None)  # URLError wraps the real cause
    if isinstance(reason, BaseException):
        err = reason
    elif reason:
        return str(reason)
    return f"{err.__class__.__name__}: {err}"
