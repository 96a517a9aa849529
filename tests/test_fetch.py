"""The fetch stage from a local HTTP server (on 127.0.0.1 only), from a zip and from a folder."""

from __future__ import annotations

import hashlib
import socket
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.fetch import fetch
from pipeline.metadata import read_metadata


def zip_folder(folder: Path, archive: Path, top: str = "maestro-v3.0.0") -> Path:
    """Zip a MAESTRO folder the way the official archive is laid out: everything under one top folder."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder)}")
    return archive


class ArchiveServer:
    """Serves one payload with HTTP Range support; can break the first response off after `cut_after` bytes, and
    can leave out the Content-Length header (the body then ends where the connection closes)."""

    def __init__(self, payload: bytes, cut_after: int | None = None, content_length: bool = True) -> None:
        self.payload, self.cut_after, self.ranges = payload, cut_after, []
        self.content_length = content_length
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def do_GET(self) -> None:  # noqa: N802
                header = self.headers.get("Range")
                server.ranges.append(header)
                start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
                body = server.payload[start:]
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                if server.content_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/maestro-v3.0.0-midi.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive(tiny_maestro: Path, tmp_path: Path) -> Path:
    return zip_folder(tiny_maestro, tmp_path / "maestro-v3.0.0-midi.zip")


def checks(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def same_tree(a: Path, b: Path) -> bool:
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    return files(a) == files(b)


def test_download_verify_and_extract(archive, tiny_maestro, tmp_path):
    sha, size = checks(archive)
    dest, downloads = tmp_path / "raw" / "maestro-v3.0.0", tmp_path / "downloads"
    with ArchiveServer(archive.read_bytes()) as server:
        counts = fetch(server.url, dest, sha, size, downloads)
    assert counts == {"listed": 3, "missing": 0}
    assert same_tree(dest, tiny_maestro)
    assert (downloads / "maestro-v3.0.0-midi.zip").read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["maestro-v3.0.0"]


def test_interrupted_download_resumes_with_a_range_request(archive, tiny_maestro, tmp_path):
    sha, size = checks(archive)
    dest, downloads = tmp_path / "raw" / "maestro-v3.0.0", tmp_path / "downloads"
    half = size // 2
    with ArchiveServer(archive.read_bytes(), cut_after=half) as server:
        with pytest.raises(PipelineError, match="resumes"):
            fetch(server.url, dest, sha, size, downloads)
        part = downloads / "maestro-v3.0.0-midi.zip.part"
        assert part.stat().st_size == half
        assert not dest.exists()
        fetch(server.url, dest, sha, size, downloads)
    assert server.ranges == [None, f"bytes={half}-"]
    assert not part.exists()
    assert same_tree(dest, tiny_maestro)


def test_without_a_content_length_the_expected_size_tells_a_download_that_broke_off(archive, tiny_maestro, tmp_path):
    _, size = checks(archive)
    dest, downloads = tmp_path / "raw" / "maestro-v3.0.0", tmp_path / "downloads"
    half = size // 2
    with ArchiveServer(archive.read_bytes(), cut_after=half, content_length=False) as server:
        with pytest.raises(PipelineError, match=f"ended early at {half:,} of {size:,} bytes") as info:
            fetch(server.url, dest, None, size, downloads)  # the cut looks like the end of the body
        assert "\n" not in str(info.value)
        part = downloads / "maestro-v3.0.0-midi.zip.part"
        assert part.stat().st_size == half and not dest.exists()
        fetch(server.url, dest, None, size, downloads)
    assert server.ranges == [None, f"bytes={half}-"] and not part.exists()
    assert same_tree(dest, tiny_maestro)


def test_checksum_mismatch_leaves_nothing_behind(archive, tmp_path):
    _, size = checks(archive)
    dest, downloads = tmp_path / "raw" / "maestro-v3.0.0", tmp_path / "downloads"
    with ArchiveServer(archive.read_bytes()) as server, pytest.raises(PipelineError, match="sha256") as info:
        fetch(server.url, dest, "0" * 64, size, downloads)
    assert server.url in str(info.value)
    assert list(downloads.iterdir()) == []
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("wrong", [-1, 1])
def test_a_download_of_the_wrong_size_is_refused_and_leaves_nothing_behind(archive, tmp_path, wrong):
    _, size = checks(archive)
    dest, downloads = tmp_path / "raw" / "maestro-v3.0.0", tmp_path / "downloads"
    with ArchiveServer(archive.read_bytes()) as server, pytest.raises(PipelineError) as info:
        fetch(server.url, dest, None, size + wrong, downloads)  # no sha256: only the size can tell
    message = str(info.value)
    assert "\n" not in message and f"size {size:,} bytes, expected {size + wrong:,}" in message
    assert server.url in message
    assert list(downloads.iterdir()) == []  # neither the archive nor a .part file
    assert list(dest.parent.iterdir()) == []


def test_a_download_of_the_right_size_passes_the_size_check(archive, tiny_maestro, tmp_path):
    _, size = checks(archive)
    dest, downloads = tmp_path / "raw" / "maestro-v3.0.0", tmp_path / "downloads"
    with ArchiveServer(archive.read_bytes()) as server:
        assert fetch(server.url, dest, None, size, downloads) == {"listed": 3, "missing": 0}
    assert same_tree(dest, tiny_maestro)
    assert (downloads / "maestro-v3.0.0-midi.zip").read_bytes() == archive.read_bytes()


def test_an_earlier_download_of_the_wrong_size_is_downloaded_again(archive, tiny_maestro, tmp_path):
    _, size = checks(archive)
    dest, downloads = tmp_path / "raw" / "maestro-v3.0.0", tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "maestro-v3.0.0-midi.zip").write_bytes(archive.read_bytes()[:-1])  # a truncated earlier download
    with ArchiveServer(archive.read_bytes()) as server:
        fetch(server.url, dest, None, size, downloads)
    assert server.ranges == [None]  # fetched afresh, from the first byte
    assert (downloads / "maestro-v3.0.0-midi.zip").read_bytes() == archive.read_bytes()
    assert same_tree(dest, tiny_maestro)


def test_unreachable_url_says_how_to_use_a_local_copy(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/maestro-v3.0.0-midi.zip"
    with pytest.raises(PipelineError) as info:
        fetch(url, tmp_path / "raw" / "m", None, None, tmp_path / "downloads")
    message = str(info.value)
    assert url in message and "data.source" in message and "dvc exp run -S data.source=" in message
    assert list((tmp_path / "raw").iterdir()) == []


def test_fetch_from_a_local_zip_and_from_a_folder(archive, tiny_maestro, tmp_path):
    sha, size = checks(archive)
    fetch(str(archive), tmp_path / "from_zip", sha, size, tmp_path / "downloads")
    fetch(str(tiny_maestro), tmp_path / "from_folder", None, None, tmp_path / "downloads")
    assert same_tree(tmp_path / "from_zip", tiny_maestro)
    assert same_tree(tmp_path / "from_folder", tiny_maestro)
    assert read_metadata(tmp_path / "from_zip") == read_metadata(tiny_maestro)


def test_local_zip_with_the_wrong_checksum_is_refused(archive, tmp_path):
    with pytest.raises(PipelineError, match="set data.sha256 and data.size to ''"):
        fetch(str(archive), tmp_path / "raw", "f" * 64, None, tmp_path / "downloads")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("wrong", [-1, 1])
def test_local_zip_of_the_wrong_size_is_refused(archive, tiny_maestro, tmp_path, wrong):
    _, size = checks(archive)
    with pytest.raises(PipelineError, match="set data.sha256 and data.size to ''") as info:
        fetch(str(archive), tmp_path / "raw", None, size + wrong, tmp_path / "downloads")
    message = str(info.value)
    assert "\n" not in message and f"size {size:,} bytes, expected {size + wrong:,}" in message
    assert not (tmp_path / "raw").exists()
    fetch(str(archive), tmp_path / "raw", None, size, tmp_path / "downloads")  # the right size passes
    assert same_tree(tmp_path / "raw", tiny_maestro)


def test_folder_without_metadata_is_a_clear_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(PipelineError, match="no MAESTRO metadata"):
        fetch(str(tmp_path / "src"), tmp_path / "raw" / "m", None, None, tmp_path / "downloads")
    assert list((tmp_path / "raw").iterdir()) == []


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        fetch(str(tmp_path / "nowhere"), tmp_path / "raw" / "m", None, None, tmp_path / "downloads")


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("maestro-v3.0.0/../../evil.mid", "leaves the target"),
        ("/etc/evil.mid", "absolute path"),
        ("maestro-v3.0.0/link.mid", "symbolic link"),
    ],
)
def test_archive_entries_that_escape_are_refused(tiny_maestro, tmp_path, entry, reason):
    archive = zip_folder(tiny_maestro, tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo(entry)
        if reason == "symbolic link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(info, b"MThd")
    with pytest.raises(PipelineError, match=f"refused archive entry '{entry}' .*{reason}"):
        fetch(str(archive), tmp_path / "raw" / "m", None, None, tmp_path / "downloads")
    assert list((tmp_path / "raw").iterdir()) == []
    assert not (tmp_path / "evil.mid").exists()
