"""``resdyn data download``/``verify``/``list`` against a loopback HTTP server that honours Range."""

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from resdyn.cli.main import main
from resdyn.data import MissingFileError, fake, load
from resdyn.data.download import DownloadError, download, fetch
from resdyn.data.integrity import md5_bytes

MAX_REQUESTS = 40


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        name = self.path.rsplit("/", 1)[-1]
        if len(srv.log) > MAX_REQUESTS or name not in srv.files:
            self.send_error(503 if len(srv.log) > MAX_REQUESTS else 404)
            return
        body = srv.files[name]
        if srv.mode in ("busy", "gone") and srv.busy.get(name, 0) < srv.busy_for:
            srv.busy[name] = srv.busy.get(name, 0) + 1  # "not now": 503, or 410 ("gone")
            self.send_response(503 if srv.mode == "busy" else 410)
            if srv.retry_after is not None:
                self.send_header("Retry-After", srv.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.mode in ("endless", "trickle", "badlength"):
            self._hostile(srv.mode)
            return
        if srv.mode == "baddrop" and srv.dropped:  # after dropping mid-file, the mirror is down
            self.send_error(503)
            return
        if srv.mode in ("wrong", "baddrop"):
            body = body[:-1] + bytes([body[-1] ^ 1])
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and srv.mode != "norange":
            start, status = int(rng.removeprefix("bytes=").split("-")[0]), 206
        payload = body[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if srv.mode in ("drop", "baddrop") and name not in srv.dropped:
            srv.dropped[name] = len(payload) // 2
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True  # the connection drops mid-file
            return
        self.wfile.write(payload)

    def _hostile(self, mode):
        import time

        self.send_response(200)
        if mode == "badlength":
            self.send_header("Content-Length", "abc")
            self.end_headers()
            self.wfile.write(b"x" * 100)
            return
        self.send_header("Connection", "close")  # no length: the body ends when the server says
        self.end_headers()
        try:
            for _ in range(100_000):
                self.wfile.write(b"\0" * (1 << 16) if mode == "endless" else b"x")
                self.wfile.flush()
                if mode == "trickle":
                    time.sleep(0.05)
        except OSError:  # the client hung up
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    servers = []

    def start(files: dict[str, bytes], mode: str = "ok") -> str:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.daemon_threads = True
        srv.files = {k.rsplit("/", 1)[-1]: v for k, v in files.items()}
        srv.mode, srv.log, srv.dropped = mode, [], {}
        srv.busy, srv.busy_for, srv.retry_after = {}, 1, None
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/mirror/"


def _mnist():
    files = fake.mnist_files(n_train=300, n_test=100, seed=3)
    return files, {k: md5_bytes(v) for k, v in files.items()}


def test_download_fetches_checks_and_renames(tmp_path, server):
    files, m = _mnist()
    srv = server(files)
    written = download("mnist", tmp_path, mirrors=[_url(srv)], manifest=m, timeout=5)
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == sorted(files)
    for rel, data in files.items():
        assert (tmp_path / rel).read_bytes() == data
    assert not list(tmp_path.rglob("*.part"))
    assert all(rng is None for _, rng in srv.log) and len(srv.log) == 4
    d = load("mnist", tmp_path, manifest=m)
    assert np.array_equal(d.y.numpy(), fake.mnist_arrays(300, 100, seed=3)["train_labels"])
    # A second run finds every file in place and asks the server nothing.
    download("mnist", tmp_path, mirrors=[_url(srv)], manifest=m)
    assert len(srv.log) == 4


def test_a_dropped_connection_is_resumed_with_a_range_request(tmp_path, server):
    files, m = _mnist()
    srv = server(files, mode="drop")
    download("mnist", tmp_path, mirrors=[_url(srv)], manifest=m, timeout=5)
    for rel, data in files.items():
        assert (tmp_path / rel).read_bytes() == data
        name = rel.rsplit("/", 1)[-1]
        ranges = [rng for path, rng in srv.log if path.endswith(name)]
        assert ranges == [None, f"bytes={len(data) // 2}-"]
    assert not list(tmp_path.rglob("*.part"))


def test_a_partial_file_left_behind_is_resumed(tmp_path, server):
    files, m = _mnist()
    rel = "MNIST/raw/train-images-idx3-ubyte.gz"
    part = tmp_path / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(files[rel][:1000])
    srv = server(files)
    download("mnist", tmp_path, mirrors=[_url(srv)], manifest=m)
    assert (tmp_path / rel).read_bytes() == files[rel]
    assert ("/mirror/train-images-idx3-ubyte.gz", "bytes=1000-") in srv.log


def test_a_server_that_ignores_range_restarts_the_file(tmp_path, server):
    files, m = _mnist()
    rel = "MNIST/raw/train-labels-idx1-ubyte.gz"
    (tmp_path / "MNIST/raw").mkdir(parents=True)
    (tmp_path / (rel + ".part")).write_bytes(files[rel][:10])
    srv = server(files, mode="norange")
    download("mnist", tmp_path, mirrors=[_url(srv)], manifest=m)
    assert (tmp_path / rel).read_bytes() == files[rel]


def test_a_wrong_checksum_leaves_nothing_behind(tmp_path, server):
    files, m = _mnist()
    srv = server(files, mode="wrong")
    with pytest.raises(DownloadError) as err:
        download("mnist", tmp_path, mirrors=[_url(srv)], manifest=m)
    rel = "MNIST/raw/train-images-idx3-ubyte.gz"
    assert "train-images-idx3-ubyte.gz" in str(err.value) and m[rel] in str(err.value)
    assert f"md5 {md5_bytes(files[rel][:-1] + bytes([files[rel][-1] ^ 1]))}" in str(err.value)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_the_next_mirror_is_tried_after_a_404(tmp_path, server):
    files, m = _mnist()
    empty, good = server({}), server(files)
    download("mnist", tmp_path, mirrors=[_url(empty), _url(good)], manifest=m)
    assert len(empty.log) == 4 and len(good.log) == 4
    assert (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz").is_file()


def test_cifar_archive_is_downloaded_and_unpacked(tmp_path, server):
    files = fake.cifar_files("cifar100", n_train=30, n_test=10, seed=5)
    m = {k: md5_bytes(v) for k, v in files.items()}
    srv = server({"cifar-100-python.tar.gz": files["cifar-100-python.tar.gz"]}, mode="drop")
    download("cifar100", tmp_path, mirrors=[_url(srv)], manifest=m)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-100-python", "cifar-100-python.tar.gz"]
    for rel in ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"):
        assert (tmp_path / rel).read_bytes() == files[rel]
    d = load("cifar100", tmp_path, manifest=m)
    assert np.array_equal(d.y.numpy(), fake.cifar_arrays("cifar100", 30, 10, seed=5)["train_labels"])


def test_loading_never_touches_the_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load() tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(MissingFileError):
        load("mnist", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- CLI


def test_cli_download_verify_and_list(tmp_path, server):
    files, m = _mnist()
    srv = server(files, mode="drop")
    mpath = tmp_path / "m.json"
    mpath.write_text(json.dumps(m))
    root = tmp_path / "data"
    runner = CliRunner()
    res = runner.invoke(main, ["data", "download", "mnist", "--root", str(root), "--mirror", _url(srv),
                               "--manifest", str(mpath), "--timeout", "5"])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and "OK  mnist" in res.output
    res = runner.invoke(main, ["data", "verify", "mnist", "--root", str(root), "--manifest", str(mpath)])
    assert res.exit_code == 0, res.output
    assert res.output.count(" ok\n") == 4 and "OK  mnist: pool 300, test 100" in res.output
    # The built-in checksums reject the generated files, naming the official md5.
    res = runner.invoke(main, ["data", "verify", "mnist", "--root", str(root)])
    assert res.exit_code == 1 and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in res.output
    res = runner.invoke(main, ["data", "list"])
    assert res.exit_code == 0
    for name in ("two_spirals", "circles", "teacher", "digits", "breast_cancer", "wine", "mnist",
                 "cifar10", "cifar100"):
        assert f"\n{name} " in res.output
    res = runner.invoke(main, ["data", "download", "digits", "--root", str(root)])
    assert res.exit_code == 0 and "needs no download" in res.output
    res = runner.invoke(main, ["data", "verify", "cifar10", "--root", str(tmp_path / "none")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_a_refusing_mirror_keeps_the_partial_file_for_the_next_one(tmp_path, server):
    files, m = _mnist()
    rel = next(iter(files))
    part = tmp_path / (rel + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(files[rel][:50])  # an earlier run stopped here
    empty, good = server({}), server(files)
    download("mnist", tmp_path, mirrors=[_url(empty), _url(good)], manifest=m)
    assert (tmp_path / rel).read_bytes() == files[rel]
    # The 404 did not discard the partial file: the good mirror was asked for the rest only.
    name = rel.rsplit("/", 1)[-1]
    assert [r for p, r in good.log if p.endswith(name)] == ["bytes=50-"]


# -- hostile mirrors ------------------------------------------------------------------------------

def _leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_a_body_with_no_length_and_no_end_stops_at_the_size_cap(tmp_path, server):
    srv = server({"f.bin": b""}, mode="endless")
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"f.bin.*sends more than 1048576 bytes .*; discarded"):
        fetch([_url(srv) + "f.bin"], dest, "0" * 32, retries=0, timeout=5, max_bytes=1 << 20)
    assert _leftovers(tmp_path) == []


def test_the_manifest_size_caps_a_real_download(tmp_path, server):
    files, m = _mnist()
    rel = "MNIST/raw/train-labels-idx1-ubyte.gz"
    srv = server({**files, rel: b"\0" * 40_000})  # the real file has 28881 bytes
    with pytest.raises(DownloadError, match=r"sends more than 28881 bytes \(40000 so far\)"):
        download("mnist", tmp_path, mirrors=[_url(srv)], manifest=m, retries=0)
    assert not list(tmp_path.rglob("*.part*"))


def test_a_trickle_stops_at_the_overall_deadline(tmp_path, server):
    srv = server({"f.bin": b""}, mode="trickle")
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"after the overall deadline of 0.5 s \(have \d+ bytes; "
                                            r"--deadline sets it\)"):
        fetch([_url(srv) + "f.bin"], dest, "0" * 32, retries=3, timeout=5, deadline=0.5)
    assert not dest.exists()


def test_a_malformed_content_length_is_that_mirrors_fault_not_a_traceback(tmp_path, server):
    files, m = _mnist()
    bad, good = server(files, mode="badlength"), server(files)
    rel = "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DownloadError, match=r"malformed Content-Length header 'abc'"):
        fetch([_url(bad) + rel.rsplit("/", 1)[1]], tmp_path / "x.gz", m[rel], retries=0)
    download("mnist", tmp_path, mirrors=[_url(bad), _url(good)], manifest=m, retries=0)
    for r, data in files.items():
        assert (tmp_path / r).read_bytes() == data
    res = CliRunner().invoke(main, ["data", "download", "mnist", "--root", str(tmp_path / "b"),
                                    "--mirror", _url(bad), "--retries", "0"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "FAILED: could not fetch" in res.output and "malformed Content-Length" in res.output


def test_a_bad_mirror_dropping_mid_file_does_not_poison_the_good_one(tmp_path, server):
    files, m = _mnist()
    bad, good = server(files, mode="baddrop"), server(files)
    download("mnist", tmp_path, mirrors=[_url(bad), _url(good)], manifest=m, retries=1)
    for rel, data in files.items():
        assert (tmp_path / rel).read_bytes() == data
        name = rel.rsplit("/", 1)[1]
        # The good mirror started afresh: the bad mirror's partial bytes were not resumed.
        assert [r for p, r in good.log if p.endswith(name)] == [None]
    assert not list(tmp_path.rglob("*.part*"))


def test_a_resumed_part_that_fails_its_checksum_is_fetched_once_afresh(tmp_path, server):
    files, m = _mnist()
    rel = "MNIST/raw/train-labels-idx1-ubyte.gz"
    part = tmp_path / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"not the start of the file")  # of unknown origin
    srv = server(files)
    download("mnist", tmp_path, mirrors=[_url(srv)], manifest=m)
    assert (tmp_path / rel).read_bytes() == files[rel]
    name = rel.rsplit("/", 1)[1]
    assert [r for p, r in srv.log if p.endswith(name)] == ["bytes=25-", None]
    assert not list(tmp_path.rglob("*.part*"))


@pytest.fixture
def waits(monkeypatch):
    """The waits fetch asks for between attempts, recorded instead of slept."""
    import resdyn.data.download as dl

    asked: list[float] = []
    monkeypatch.setattr(dl, "_pause", asked.append)
    return asked


def test_a_busy_mirror_is_tried_again_after_its_retry_after(tmp_path, server, waits):
    files, m = _mnist()
    srv = server(files, mode="busy")
    srv.retry_after = "3"
    download("mnist", tmp_path, mirrors=[_url(srv)], manifest=m, retries=2)
    for rel, data in files.items():
        assert (tmp_path / rel).read_bytes() == data
    assert waits == [3.0] * len(files)  # one 503 per file, its Retry-After honoured
    assert len(srv.log) == 2 * len(files)


def test_without_retry_after_the_waits_double_and_a_mirror_busy_throughout_fails(tmp_path, server,
                                                                                 waits):
    files, m = _mnist()
    srv = server({"train-labels-idx1-ubyte.gz": files["MNIST/raw/train-labels-idx1-ubyte.gz"]},
                 mode="busy")
    srv.busy_for = 10
    dest = tmp_path / "train-labels-idx1-ubyte.gz"
    with pytest.raises(DownloadError) as err:
        fetch([_url(srv) + "train-labels-idx1-ubyte.gz"], dest, m["MNIST/raw/train-labels-idx1-ubyte.gz"],
              retries=3, timeout=5)
    assert waits == [1.0, 2.0, 4.0] and len(srv.log) == 4  # 1 + 3 retries
    assert "\n" not in str(err.value) and str(err.value).count("HTTP 503") == 4
    assert not dest.exists()


def test_a_retry_after_is_capped_and_one_past_the_deadline_is_not_waited_for(tmp_path, server, waits):
    import resdyn.data.download as dl

    files, m = _mnist()
    rel = "MNIST/raw/train-labels-idx1-ubyte.gz"
    srv = server({rel: files[rel]}, mode="busy")
    srv.retry_after = "86400"
    dest = tmp_path / "a.gz"
    fetch([_url(srv) + "train-labels-idx1-ubyte.gz"], dest, m[rel], retries=1, timeout=5)
    assert waits == [dl.MAX_RETRY_WAIT] and dest.read_bytes() == files[rel]
    # With 10 s left, a 30 s wait is not begun: the mirror's 503 is its answer.
    srv.busy.clear()
    with pytest.raises(DownloadError, match="HTTP 503"):
        fetch([_url(srv) + "train-labels-idx1-ubyte.gz"], tmp_path / "b.gz", m[rel], retries=1,
              timeout=5, deadline=10)
    assert waits == [dl.MAX_RETRY_WAIT]


def test_a_status_that_is_not_transient_moves_on_to_the_next_mirror_at_once(tmp_path, server, waits):
    files, m = _mnist()
    gone, good = server(files, mode="gone"), server(files)
    download("mnist", tmp_path, mirrors=[_url(gone), _url(good)], manifest=m, retries=3)
    assert waits == [] and len(gone.log) == len(files) and len(good.log) == len(files)
