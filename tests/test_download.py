"""fetch() against a local HTTP server (127.0.0.1, ephemeral port) with Range support."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from fixtures_raspbian import make_raspbian_fixture, zip_fixture

from builder.errors import DownloadError
from builder.image import download
from builder.image.download import fetch

NAME = "raspbian-stretch-lite"


@dataclass
class Behaviour:
    files: dict[str, bytes] = field(default_factory=dict)
    cut_first_at: int | None = None  # first request: close the socket after N bytes
    cut_always_at: int | None = None  # every request: die at absolute offset N
    ignore_range: bool = False
    first_status: int | None = None  # answer the first request with this error status
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        b = self.server.behaviour
        rng = self.headers.get("Range")
        b.requests.append((self.path, rng))
        body = b.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if b.first_status is not None and len(b.requests) == 1:
            self.send_error(b.first_status)
            return
        start = 0
        if rng and not b.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        end = len(body)
        if b.cut_first_at is not None and len(b.requests) == 1:
            end = b.cut_first_at
        if b.cut_always_at is not None:
            end = min(end, b.cut_always_at)
        self.wfile.write(body[start:end])
        self.wfile.flush()
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    behaviour: Behaviour


@dataclass
class Served:
    behaviour: Behaviour
    base: str
    server: _Server

    def url(self, path: str) -> str:
        return self.base + path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served() -> Iterator[Served]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.behaviour = Behaviour()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    s = Served(server.behaviour, f"http://127.0.0.1:{server.server_address[1]}", server)
    yield s
    if thread.is_alive():
        s.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raspbian_fixture(tmp_path_factory.mktemp("fixture") / "raspbian.img")


@pytest.fixture(scope="module")
def image_zip(image: Path) -> bytes:
    return zip_fixture(image).read_bytes()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "BACKOFF", (0.0, 0.0, 0.0, 0.0))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(cache: Path) -> list[str]:
    root = cache / "bases"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def error_of(excinfo: pytest.ExceptionInfo[DownloadError]) -> str:
    return str(excinfo.value)


# -- unpacking ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "xz", "gz", "img"])
def test_fetch_unpacks_each_format(
    kind: str, served: Served, image: Path, image_zip: bytes, tmp_path: Path
) -> None:
    raw = image.read_bytes()
    packed = {
        "zip": lambda: image_zip,
        "xz": lambda: lzma.compress(raw, preset=0),
        "gz": lambda: gzip.compress(raw, compresslevel=1),
        "img": lambda: raw,
    }[kind]()
    served.behaviour.files[f"/raspbian.{kind}"] = packed
    cache = tmp_path / "cache"

    got = fetch(
        served.url(f"/raspbian.{kind}"), sha(packed), name=NAME, cache=cache, progress=False
    )

    assert got == cache / "bases" / sha(packed) / f"{NAME}.img"
    assert sha(got.read_bytes()) == sha(raw)
    assert listing(cache) == [sha(packed), f"{sha(packed)}/{NAME}.img", f"{sha(packed)}/verified"]


def test_fetched_image_is_sparse(
    served: Served, image: Path, image_zip: bytes, tmp_path: Path
) -> None:
    served.behaviour.files["/r.zip"] = image_zip
    got = fetch(served.url("/r.zip"), sha(image_zip), name=NAME, cache=tmp_path, progress=False)
    st = got.stat()
    assert st.st_size == image.stat().st_size
    assert st.st_blocks * 512 < st.st_size // 4  # the 64 MiB fixture is mostly zeros


def test_zip_with_two_images_is_refused(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.img", b"a" * 512)
        zf.writestr("b.img", b"b" * 512)
    data = path.read_bytes()
    served.behaviour.files["/two.zip"] = data
    with pytest.raises(DownloadError) as excinfo:
        fetch(served.url("/two.zip"), sha(data), name=NAME, cache=tmp_path / "c", progress=False)
    assert error_of(excinfo) == (
        f"base '{NAME}': the zip holds 2 .img files (a.img, b.img), expected exactly one; "
        "point the url at a single image"
    )
    assert listing(tmp_path / "c") == []


# -- verification and HTTP errors -------------------------------------------


def test_checksum_mismatch_is_fatal_and_leaves_nothing(
    served: Served, image_zip: bytes, tmp_path: Path
) -> None:
    served.behaviour.files["/r.zip"] = image_zip
    wrong = "12" * 32
    url = served.url("/r.zip")
    with pytest.raises(DownloadError) as excinfo:
        fetch(url, wrong, name=NAME, cache=tmp_path, progress=False)
    assert error_of(excinfo) == (
        f"base '{NAME}': checksum mismatch: expected {wrong}, got {sha(image_zip)}; "
        f"the file at {url} is not the one the catalog names (fix the sha256 or the url)"
    )
    assert listing(tmp_path) == []


def test_http_404(served: Served, tmp_path: Path) -> None:
    url = served.url("/x.zip")
    with pytest.raises(DownloadError) as excinfo:
        fetch(url, "ab" * 32, name=NAME, cache=tmp_path, progress=False)
    assert error_of(excinfo) == (
        f"base '{NAME}': download failed: HTTP 404 for {url}; "
        "check the url in the base catalog or cluster.yaml"
    )
    assert listing(tmp_path) == []


def test_unreachable_server(served: Served, tmp_path: Path) -> None:
    url = served.url("/r.zip")
    served.stop()
    with pytest.raises(DownloadError) as excinfo:
        fetch(url, "ab" * 32, name=NAME, cache=tmp_path, progress=False)
    assert error_of(excinfo) == (
        f"base '{NAME}': download failed: cannot reach {url} after 4 retries: "
        "Connection refused; check the network and the url in the base catalog or cluster.yaml"
    )
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("url", "digest", "message"),
    [
        (
            "http://127.0.0.1:9/x.zip",
            "xyz",
            f"base '{NAME}': sha256 'xyz' is not 64 hex digits; "
            "fix the sha256 in the base catalog or cluster.yaml",
        ),
        (
            "ftp://127.0.0.1/x.zip",
            "ab" * 32,
            f"base '{NAME}': unsupported url scheme 'ftp' in ftp://127.0.0.1/x.zip; "
            "use http(s)://, file:// or a local path",
        ),
    ],
)
def test_bad_catalog_entries(url: str, digest: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as excinfo:
        fetch(url, digest, name=NAME, cache=tmp_path, progress=False)
    assert error_of(excinfo) == message


# -- resuming -----------------------------------------------------------------


def test_dropped_connection_is_resumed_with_range(
    served: Served, image: Path, image_zip: bytes, tmp_path: Path
) -> None:
    served.behaviour.files["/r.zip"] = image_zip
    served.behaviour.cut_first_at = 100_000

    got = fetch(served.url("/r.zip"), sha(image_zip), name=NAME, cache=tmp_path, progress=False)

    assert served.behaviour.requests == [("/r.zip", None), ("/r.zip", "bytes=100000-")]
    assert sha(got.read_bytes()) == sha(image.read_bytes())
    assert not (tmp_path / "bases" / f"{sha(image_zip)}.part").exists()


def test_transient_http_error_is_retried(served: Served, image_zip: bytes, tmp_path: Path) -> None:
    served.behaviour.files["/r.zip"] = image_zip
    served.behaviour.first_status = 503

    got = fetch(served.url("/r.zip"), sha(image_zip), name=NAME, cache=tmp_path, progress=False)

    assert served.behaviour.requests == [("/r.zip", None), ("/r.zip", None)]
    assert got.is_file()


def test_server_ignoring_range_starts_over(
    served: Served, image: Path, image_zip: bytes, tmp_path: Path
) -> None:
    served.behaviour.files["/r.zip"] = image_zip
    served.behaviour.cut_first_at = 100_000
    served.behaviour.ignore_range = True

    got = fetch(served.url("/r.zip"), sha(image_zip), name=NAME, cache=tmp_path, progress=False)

    assert served.behaviour.requests == [("/r.zip", None), ("/r.zip", "bytes=100000-")]
    assert sha(got.read_bytes()) == sha(image.read_bytes())


def test_always_truncating_server_gives_up_and_keeps_the_part(
    served: Served, image: Path, image_zip: bytes, tmp_path: Path
) -> None:
    served.behaviour.files["/r.zip"] = image_zip
    served.behaviour.cut_always_at = 100_000
    url = served.url("/r.zip")

    with pytest.raises(DownloadError) as excinfo:
        fetch(url, sha(image_zip), name=NAME, cache=tmp_path, progress=False)

    assert error_of(excinfo) == (
        f"base '{NAME}': connection dropped after 4 retries at 100000 of {len(image_zip)} bytes: "
        "connection closed by the server before the end; run the build again to resume"
    )
    # the first drop made progress and is retried at once; then 4 retries with backoff
    assert len(served.behaviour.requests) == 6
    # Only the clearly temporary partial is left, and the next run resumes it.
    assert listing(tmp_path) == [f"{sha(image_zip)}.part"]
    served.behaviour.cut_always_at = None
    served.behaviour.requests.clear()

    got = fetch(url, sha(image_zip), name=NAME, cache=tmp_path, progress=False)

    assert served.behaviour.requests == [("/r.zip", "bytes=100000-")]
    assert sha(got.read_bytes()) == sha(image.read_bytes())


def test_ctrl_c_leaves_a_part_that_the_next_fetch_resumes(
    served: Served, image_zip: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served.behaviour.files["/r.zip"] = image_zip
    monkeypatch.setattr(download, "CHUNK", 64 << 10)

    def interrupt(self: object, got: int) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(download._Progress, "update", interrupt)
        with pytest.raises(KeyboardInterrupt):
            fetch(served.url("/r.zip"), sha(image_zip), name=NAME, cache=tmp_path)

    assert listing(tmp_path) == [f"{sha(image_zip)}.part"]
    have = (tmp_path / "bases" / f"{sha(image_zip)}.part").stat().st_size
    assert 0 < have < len(image_zip)

    fetch(served.url("/r.zip"), sha(image_zip), name=NAME, cache=tmp_path, progress=False)

    assert served.behaviour.requests[-1] == ("/r.zip", f"bytes={have}-")
    assert listing(tmp_path) == [
        sha(image_zip),
        f"{sha(image_zip)}/{NAME}.img",
        f"{sha(image_zip)}/verified",
    ]


def test_complete_part_is_not_downloaded_again(
    served: Served, image_zip: bytes, tmp_path: Path
) -> None:
    served.behaviour.files["/r.zip"] = image_zip
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / f"{sha(image_zip)}.part").write_bytes(image_zip)

    fetch(served.url("/r.zip"), sha(image_zip), name=NAME, cache=tmp_path, progress=False)

    assert served.behaviour.requests == [("/r.zip", f"bytes={len(image_zip)}-")]  # got 416


# -- cache and local files ----------------------------------------------------


def test_cached_base_is_used_offline(
    served: Served, image_zip: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served.behaviour.files["/r.zip"] = image_zip
    url = served.url("/r.zip")
    first = fetch(url, sha(image_zip), name=NAME, cache=tmp_path, progress=False)
    served.stop()

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr(requests, "get", no_network)
    again = fetch(url, sha(image_zip), name=NAME, cache=tmp_path, progress=False)

    assert again == first
    assert len(served.behaviour.requests) == 1


def test_local_path_and_file_url(image: Path, image_zip: bytes, tmp_path: Path) -> None:
    local = tmp_path / "dl" / "raspbian.zip"
    local.parent.mkdir()
    local.write_bytes(image_zip)

    by_path = fetch(str(local), sha(image_zip), name=NAME, cache=tmp_path / "a", progress=False)
    by_url = fetch(
        f"file://{local}", sha(image_zip), name=NAME, cache=tmp_path / "b", progress=False
    )

    assert sha(by_path.read_bytes()) == sha(by_url.read_bytes()) == sha(image.read_bytes())
    assert local.read_bytes() == image_zip  # the user's file is left alone


def test_local_raw_image_is_copied_not_moved(image: Path, tmp_path: Path) -> None:
    digest = sha(image.read_bytes())
    got = fetch(str(image), digest, name=NAME, cache=tmp_path, progress=False)
    assert image.exists()
    assert sha(got.read_bytes()) == digest


def test_local_path_is_verified_too(image_zip: bytes, tmp_path: Path) -> None:
    local = tmp_path / "raspbian.zip"
    local.write_bytes(image_zip)
    with pytest.raises(DownloadError) as excinfo:
        fetch(str(local), "0" * 64, name=NAME, cache=tmp_path / "c", progress=False)
    assert error_of(excinfo) == (
        f"base '{NAME}': checksum mismatch: expected {'0' * 64}, got {sha(image_zip)}; "
        f"the file at {local} is not the one the catalog names (fix the sha256 or the url)"
    )
    assert local.exists()
    assert listing(tmp_path / "c") == []


def test_missing_local_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.img.xz"
    with pytest.raises(DownloadError) as excinfo:
        fetch(str(missing), "0" * 64, name=NAME, cache=tmp_path, progress=False)
    assert error_of(excinfo) == (
        f"base '{NAME}': {missing}: no such file; check the url in the base catalog or cluster.yaml"
    )


# -- progress -----------------------------------------------------------------


def test_progress_is_a_line_per_ten_percent_when_not_a_tty(
    served: Served,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    served.behaviour.files["/r.img"] = data
    monkeypatch.setattr(download, "CHUNK", 32 << 10)

    fetch(served.url("/r.img"), sha(data), name=NAME, cache=tmp_path)

    lines = [ln for ln in capsys.readouterr().err.splitlines() if "% of" in ln]
    assert lines == [f"    base '{NAME}': {p}% of 1.0 MiB" for p in range(10, 101, 10)]
