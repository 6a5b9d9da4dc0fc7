"""The one downloader (``downloads.fetch``) and the dataset download path built on it.

Nothing is fetched from the network: local files (file:// URLs, or a local HTTP server on
127.0.0.1) stand in. The dataset archive holds real ESC-50 clips (one per class) under an
``ESC-50-master/`` top folder, as ``https://github.com/karoldvl/ESC-50/archive/master.zip`` does.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.paths import CONF_DIR
from hydra import compose, initialize_config_dir

from esc50_lightning.data import FoldedAudioDataModule
from esc50_lightning.data.download import ensure_dataset
from esc50_lightning.data.table import DatasetSpec
from esc50_lightning.downloads import default_cache_dir, fetch
from esc50_lightning.errors import UserError


def make_archive(esc50_root: Path, dest: Path, drop_one_clip: bool = False) -> tuple[Path, pd.DataFrame]:
    """A zip of one clip of every class (classes spread over the five folds), laid out as GitHub's
    master.zip."""
    frame = pd.read_csv(esc50_root / "meta" / "esc50.csv")
    frame = frame[frame.fold == frame.target % 5 + 1].groupby("target").head(1).reset_index(drop=True)
    archive = dest / "master.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ESC-50-master/meta/esc50.csv", frame.to_csv(index=False))
        zf.writestr("ESC-50-master/README.md", "ESC-50\n")
        for name in frame.filename[1:] if drop_one_clip else frame.filename:
            zf.write(esc50_root / "audio" / name, f"ESC-50-master/audio/{name}")
    return archive, frame


def spec_for(root: Path, url: str) -> DatasetSpec:
    return DatasetSpec(name="esc50", root=str(root), download_url=url)


def test_download_lays_out_the_dataset_and_checks_the_checksum(esc50_root: Path, tmp_path: Path) -> None:
    archive, frame = make_archive(esc50_root, tmp_path)
    root = tmp_path / "data" / "ESC-50"  # data/ does not exist yet
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    ensure_dataset(spec_for(root, archive.as_uri()), sha256=digest)

    assert (root / "meta" / "esc50.csv").is_file()
    wavs = sorted(p.name for p in (root / "audio").glob("*.wav"))
    assert wavs == sorted(frame.filename)
    assert (root / "audio" / wavs[0]).read_bytes() == (esc50_root / "audio" / wavs[0]).read_bytes()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ESC-50"], "download leftovers"

    # The datamodule reads what was downloaded, and a second call downloads nothing.
    offline = spec_for(root, (tmp_path / "missing.zip").as_uri())
    dm = FoldedAudioDataModule(dataset=offline, cache_features=False)
    assert len(dm.table) == len(frame) == 50


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("checksum", r"not the expected esc50 dataset archive \(sha256 [0-9a-f]{64}, expected 0{64}\)"),
        ("incomplete", "1 clips missing"),
        ("unreachable", r"cannot download esc50 dataset archive from file://.*missing\.zip .*unpack it"),
    ],
)
def test_failed_download_says_why_and_leaves_nothing_behind(
    esc50_root: Path, tmp_path: Path, problem: str, message: str
) -> None:
    archive, _ = make_archive(esc50_root, tmp_path, drop_one_clip=problem == "incomplete")
    url = (tmp_path / "missing.zip").as_uri() if problem == "unreachable" else archive.as_uri()
    root = tmp_path / "data" / "sets" / "ESC-50"
    with pytest.raises(UserError, match=message):
        ensure_dataset(spec_for(root, url), sha256="0" * 64 if problem == "checksum" else None)
    assert not (tmp_path / "data").exists(), "a failed download left folders behind"


def test_failed_download_keeps_folders_that_were_there(esc50_root: Path, tmp_path: Path) -> None:
    (tmp_path / "data" / "mine.txt").parent.mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep")
    root = tmp_path / "data" / "ESC-50"
    with pytest.raises(UserError, match="cannot download esc50 dataset archive from"):
        ensure_dataset(spec_for(root, (tmp_path / "missing.zip").as_uri()))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mine.txt"]


def test_a_non_empty_folder_without_the_csv_is_not_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "ESC-50"
    (root / "audio").mkdir(parents=True)
    with pytest.raises(UserError, match=r"exists but has no meta/esc50\.csv"):
        ensure_dataset(spec_for(root, (tmp_path / "missing.zip").as_uri()))
    assert (root / "audio").is_dir()


# ---- the downloader itself ------------------------------------------------------------------


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every URL torch.hub's downloader was asked for (it still downloads)."""
    seen: list[str] = []
    real = torch.hub.download_url_to_file

    def counting(url: str, dst: str, *args, **kwargs) -> None:
        seen.append(url)
        real(url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", counting)
    return seen


def _payload(tmp_path: Path, size: int = 5000) -> tuple[Path, str]:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return source, hashlib.sha256(source.read_bytes()).hexdigest()


def test_good_file_is_fetched_once_and_reused(tmp_path: Path, calls: list[str]) -> None:
    source, digest = _payload(tmp_path)
    dest = tmp_path / "cache" / "pretrained" / "weights.pth"  # folders made as needed
    for prefix in (digest, digest[:8]):  # the full sha256, or torchvision's 8-digit prefix
        assert fetch(source.as_uri(), dest, sha256=prefix, size=5000, min_size=100) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert calls == [source.as_uri()], "the second call downloaded again"
    assert socket.getdefaulttimeout() is None, "the download's socket timeout outlived it"
    assert [p.name for p in dest.parent.iterdir()] == ["weights.pth"], "temporary files left behind"
    source.unlink()  # the source gone: the kept copy still serves
    assert fetch(source.as_uri(), dest, sha256=digest) == dest
    assert len(calls) == 1


def test_hash_mismatch_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    source, digest = _payload(tmp_path)
    dest = tmp_path / "cache" / "weights.pth"
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(UserError) as err:
        fetch(source.as_uri(), dest, sha256=wrong, what="test weights")
    message = str(err.value)
    assert message == (
        f"downloaded {source.as_uri()}: not the expected test weights "
        f"(sha256 {digest}, expected {wrong}); nothing was saved"
    )
    assert not dest.exists() and not list(dest.parent.iterdir())


@pytest.mark.parametrize(
    ("size", "min_size", "why"),
    [(6000, None, "5000 bytes, expected 6000"), (None, 10_000, "only 5000 bytes, expected at least 10000")],
)
def test_too_small_file_is_refused(tmp_path: Path, size: int | None, min_size: int | None, why: str) -> None:
    source, _ = _payload(tmp_path)
    dest = tmp_path / "cache" / "weights.pth"
    with pytest.raises(UserError, match=f"not the expected file \\({why}\\)"):
        fetch(source.as_uri(), dest, size=size, min_size=min_size)
    assert not list(dest.parent.iterdir())


def test_a_bad_file_already_there_is_named_not_replaced(tmp_path: Path, calls: list[str]) -> None:
    source, digest = _payload(tmp_path)
    dest = tmp_path / "weights.pth"
    dest.write_bytes(b"half a file")
    stale = r"weights\.pth: not the expected file \(sha256 .*delete it to download again"
    with pytest.raises(UserError, match=stale):
        fetch(source.as_uri(), dest, sha256=digest)
    assert dest.read_bytes() == b"half a file" and calls == []


def test_unreachable_url_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    dest = tmp_path / "weights.pth"
    url = (tmp_path / "nowhere.pth").as_uri()
    with pytest.raises(UserError) as err:
        fetch(url, dest, what="test weights")
    message = str(err.value)
    assert message.startswith(f"cannot download test weights from {url} (")
    assert message.endswith(f"download it elsewhere and put it at {dest}") and "\n" not in message
    with pytest.raises(UserError, match=r"\(ValueError: unknown url type: 'nope'\); fetch it by hand"):
        fetch("nope", dest, instead="fetch it by hand")
    assert not list(tmp_path.iterdir())
    (tmp_path / "a-file").write_text("")  # a folder that cannot be made
    with pytest.raises(UserError, match=r"a-file/sub: cannot save test weights there \(.*\); download it"):
        fetch(url, tmp_path / "a-file" / "sub" / "weights.pth", what="test weights")


class _Server(http.server.BaseHTTPRequestHandler):
    """/ok: 5000 bytes; /cut: promises 5000 bytes, sends 100 and hangs up; anything else: 404."""

    body = bytes(range(250)) * 20

    def do_GET(self) -> None:
        if self.path not in ("/ok", "/cut"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body if self.path == "/ok" else self.body[:100])
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_over_http_a_cut_download_and_a_404_are_refused(tmp_path: Path, server: str) -> None:
    dest = tmp_path / "cache" / "weights.pth"
    with pytest.raises(UserError, match=r"cannot download file from http://.*/missing \(HTTP Error 404"):
        fetch(f"{server}/missing", dest)
    # torch.hub keeps what arrived of a cut-short response: the size floor is what refuses it.
    cut = r"/cut: not the expected file \(only 100 bytes, expected at least 1000\)"
    with pytest.raises(UserError, match=cut):
        fetch(f"{server}/cut", dest, min_size=1000)
    assert not list(dest.parent.iterdir())
    digest = hashlib.sha256(_Server.body).hexdigest()
    assert fetch(f"{server}/ok", dest, sha256=digest, size=5000).read_bytes() == _Server.body


def test_one_default_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The configs' paths.cache_dir, the cache command and the datamodule agree on the folder."""
    from esc50_lightning.commands import cache as cache_command
    from esc50_lightning.models import cnn14

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for env in (None, str(tmp_path / "elsewhere")):
        if env is None:
            monkeypatch.delenv("ESC50_CACHE", raising=False)
        else:
            monkeypatch.setenv("ESC50_CACHE", env)
        expected = Path(env) if env else tmp_path / "home" / ".cache" / "esc50-lightning"
        assert default_cache_dir() == expected
        assert cache_command.default_cache_dir() == expected
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=["model=cnn14"])
        assert Path(cfg.paths.cache_dir) == expected
        assert Path(cfg.model.net.cache_dir) == expected / "pretrained"
        assert cnn14.pretrained_dir() == expected / "pretrained"
        dm = FoldedAudioDataModule(dataset=spec_for(tmp_path / "absent", None), cache_features=False)
        assert dm.cache_root == expected
