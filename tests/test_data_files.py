"""MNIST and CIFAR files: round trips, the checksum path, its errors, the restricted unpickler."""

import gzip
import io
import os
import pickle
import pickletools
import tarfile

import numpy as np
import pytest
import torch

from resdyn.data import (
    ChecksumError,
    DataRootError,
    FormatError,
    MissingFileError,
    TruncatedFileError,
    UnsafePickleError,
    fake,
    load,
    subsample,
    use_manifest,
)
from resdyn.data.formats import dumps_like_cifar, parse_idx, safe_unpickle, write_idx
from resdyn.data.integrity import md5_bytes

MNIST_GZ = "MNIST/raw/train-images-idx3-ubyte.gz"
BATCH1 = "cifar-10-batches-py/data_batch_1"


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("compressed", [True, False])
def test_mnist_idx_files_round_trip(tmp_path, compressed):
    m = fake.write_mnist(tmp_path, n_train=60, n_test=30, seed=4, gzip=compressed)
    assert len(m) == 4 and all(k.endswith(".gz") == compressed for k in m)
    d = load("mnist", tmp_path, manifest=m)
    a = fake.mnist_arrays(60, 30, seed=4)
    assert d.x.shape == (60, 1, 28, 28) and d.x.dtype == torch.uint8
    assert np.array_equal(d.x[:, 0].numpy(), a["train_images"])
    assert np.array_equal(d.x_test[:, 0].numpy(), a["test_images"])
    assert np.array_equal(d.y.numpy(), a["train_labels"]) and d.y.dtype == torch.long
    assert np.array_equal(d.y_test.numpy(), a["test_labels"])
    x = a["train_images"].astype(np.float64) / 255
    assert d.mean.shape == (1, 1, 1)
    assert float(d.mean) == pytest.approx(x.mean(), abs=1e-12)
    assert float(d.std) == pytest.approx(x.std(), abs=1e-12)
    assert d.meta["pool_size"] == 60 and d.meta["test_size"] == 30


def test_idx_byte_layout_is_lecuns():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_idx(a)
    assert raw[:16] == bytes.fromhex("00000803" "00000002" "00000003" "00000004")
    assert raw[16:] == bytes(range(24))
    assert np.array_equal(parse_idx(raw, "x", 3), a)
    with pytest.raises(FormatError, match=r"x: IDX file has 3 dimensions, expected 1"):
        parse_idx(raw, "x", 1)


@pytest.mark.parametrize("layout", ["extracted", "archive"])
def test_cifar10_batches_round_trip(tmp_path, layout):
    m = fake.write_cifar(tmp_path, "cifar10", n_train=55, n_test=20, seed=2,
                         archive=layout == "archive", extracted=layout == "extracted")
    assert ("cifar-10-python.tar.gz" in os.listdir(tmp_path)) == (layout == "archive")
    assert (tmp_path / "cifar-10-batches-py").is_dir() == (layout == "extracted")
    d = load("cifar10", tmp_path, manifest=m)
    a = fake.cifar_arrays("cifar10", 55, 20, seed=2)
    assert d.x.shape == (55, 3, 32, 32) and d.x.dtype == torch.uint8
    # Row layout: 1024 red, then green, then blue values, each plane row-major.
    assert np.array_equal(d.x.numpy().reshape(55, 3072), a["train_data"])
    assert int(d.x[3, 1, 2, 5]) == int(a["train_data"][3, 1024 + 2 * 32 + 5])
    assert np.array_equal(d.y.numpy(), a["train_labels"])
    assert np.array_equal(d.x_test.numpy().reshape(20, 3072), a["test_data"])
    assert d.meta["classes"][:2] == ["airplane", "automobile"]
    xf = a["train_data"].reshape(55, 3, 1024).astype(np.float64) / 255
    assert torch.allclose(d.mean.flatten(), torch.from_numpy(xf.mean((0, 2))))
    assert torch.allclose(d.std.flatten(), torch.from_numpy(xf.std((0, 2))))


def test_cifar100_fine_and_coarse_labels(tmp_path):
    m = fake.write_cifar(tmp_path, "cifar100", n_train=120, n_test=40, seed=1)
    fine = load("cifar100", tmp_path, manifest=m)
    coarse = load("cifar100", tmp_path, manifest=m, labels="coarse")
    a = fake.cifar_arrays("cifar100", 120, 40, seed=1)
    assert (fine.num_classes, coarse.num_classes) == (100, 20)
    assert np.array_equal(fine.y.numpy(), a["train_labels"])
    assert np.array_equal(coarse.y.numpy(), a["train_labels"] // 5)
    assert torch.equal(fine.x, coarse.x) and fine.meta["classes"][7] == "fine_07"


def test_cifar100_coarse_labels_are_read_from_the_file_not_derived(tmp_path):
    # Real superclasses do not follow fine // 5 (apple is in 4, aquarium fish in 1): write batches
    # whose coarse labels are (7 y + 3) mod 20 and read those back.
    from resdyn.data.formats import dumps_like_cifar

    files = fake.cifar_files("cifar100", 120, 40, seed=1, archive=False)
    a = fake.cifar_arrays("cifar100", 120, 40, seed=1)
    want = {}
    for split in ("train", "test"):
        y = a[f"{split}_labels"]
        want[split] = (7 * y + 3) % 20
        files[f"cifar-100-python/{split}"] = dumps_like_cifar({
            "filenames": [f"{split}_{j:05d}.png" for j in range(len(y))], "batch_label": "b",
            "fine_labels": y.tolist(), "coarse_labels": want[split].tolist(), "data": a[f"{split}_data"]})
    m = fake.write_files(tmp_path, files)
    d = load("cifar100", tmp_path, manifest=m, labels="coarse")
    assert np.array_equal(d.y.numpy(), want["train"]) and np.array_equal(d.y_test.numpy(), want["test"])
    assert not np.array_equal(d.y.numpy(), a["train_labels"] // 5)


def test_fake_cifar_pickles_are_written_as_python2_did(tmp_path):
    fake.write_cifar(tmp_path, "cifar10", n_train=10, n_test=5)
    raw = (tmp_path / BATCH1).read_bytes()
    ops = list(pickletools.genops(raw))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    names = {op.name for op, _, _ in ops}
    assert "BINSTRING" in names and not names & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES"}
    d = pickle.loads(raw, encoding="latin1")  # how torchvision reads the real files
    assert sorted(d) == ["batch_label", "data", "filenames", "labels"]


def test_generated_files_are_byte_for_byte_reproducible(tmp_path):
    a = fake.write_cifar(tmp_path / "a", "cifar10", n_train=10, n_test=5)
    b = fake.write_cifar(tmp_path / "b", "cifar10", n_train=10, n_test=5)
    assert a == b and fake.write_mnist(tmp_path / "a") == fake.write_mnist(tmp_path / "b")


def test_the_generated_conv_path_runs(tmp_path):
    from resdyn.models import ConvResNet, init_params
    from resdyn.training.engine import TrainConfig, train

    m = fake.write_mnist(tmp_path, n_train=100, n_test=40, size=8)
    d = load("mnist", tmp_path, manifest=m)
    model = ConvResNet(in_channels=1, out_dim=10, channels=4, depth=2)
    res = train(model, init_params(model, [0]), d, [subsample(d, 50, 0)], lr=1e-2,
                config=TrainConfig(steps=30), seeds=[0])
    assert res.state.loss_history[-1, 0] < 0.5 * res.state.loss_history[0, 0]


# --------------------------------------------------------------------------- integrity path


def test_the_built_in_manifest_is_what_loaders_check_against(tmp_path):
    fake.write_mnist(tmp_path)
    with pytest.raises(ChecksumError) as err:
        load("mnist", tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert "resdyn data fetch mnist" in msg


def test_use_manifest_injects_checksums_for_a_block(tmp_path):
    m = fake.write_cifar(tmp_path, "cifar10", n_train=10, n_test=5)
    with use_manifest(m):
        assert len(load("cifar10", tmp_path).y) == 10
    with pytest.raises(ChecksumError, match="c99cafc152244af753f735de768cd75f"):
        load("cifar10", tmp_path)


def test_corrupt_byte_gives_a_checksum_error_naming_file_and_expected_md5(tmp_path):
    m = fake.write_cifar(tmp_path, "cifar10", n_train=20, n_test=5, archive=False)
    path = tmp_path / BATCH1
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    before = _snapshot(tmp_path)
    with pytest.raises(ChecksumError) as err:
        load("cifar10", tmp_path, manifest=m)
    assert type(err.value) is ChecksumError
    assert str(path) in str(err.value) and m[BATCH1] in str(err.value)
    assert "delete it" in str(err.value)
    assert _snapshot(tmp_path) == before  # loading never writes


@pytest.mark.parametrize(("rel", "why"), [
    (MNIST_GZ, "compressed stream ends early"),
    ("MNIST/raw/train-images-idx3-ubyte", "IDX header declares"),
    (BATCH1, "pickle ends early"),
])
def test_truncated_files_say_so(tmp_path, rel, why):
    if rel.startswith("MNIST"):
        m = fake.write_mnist(tmp_path, gzip=rel.endswith(".gz"))
    else:
        m = fake.write_cifar(tmp_path, "cifar10", n_train=20, n_test=5, archive=False)
    path = tmp_path / rel
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    name = "mnist" if rel.startswith("MNIST") else "cifar10"
    with pytest.raises(TruncatedFileError, match=why) as err:
        load(name, tmp_path, manifest=m)
    assert str(path) in str(err.value) and m[rel] in str(err.value)


def test_missing_file_and_missing_root_have_their_own_errors(tmp_path, monkeypatch):
    m = fake.write_mnist(tmp_path)
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MissingFileError, match=r"t10k-labels-idx1-ubyte\.gz.*expected checksum "
                                                + m["MNIST/raw/t10k-labels-idx1-ubyte.gz"]):
        load("mnist", tmp_path, manifest=m)
    with pytest.raises(MissingFileError, match=r"cifar-10-python\.tar\.gz.*c58f30108f718f92"):
        load("cifar10", tmp_path)
    with pytest.raises(DataRootError, match=r"does not exist.*resdyn data fetch cifar100"):
        load("cifar100", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)  # root=None is ./data, absent here
    with pytest.raises(DataRootError, match=r"default data root 'data' .*run `resdyn data fetch "
                                            r"mnist`"):
        load("mnist")
    assert not (tmp_path / "nowhere").exists()


def test_wrong_format_behind_a_matching_checksum_is_a_format_error(tmp_path):
    m = fake.write_mnist(tmp_path)
    bad = gzip.compress(b"\x00\x00\x08\x02" + bytes(100), mtime=0)
    (tmp_path / MNIST_GZ).write_bytes(bad)
    m[MNIST_GZ] = md5_bytes(bad)
    with pytest.raises(FormatError, match=r"train-images-idx3-ubyte\.gz: IDX file has 2 dimensions"):
        load("mnist", tmp_path, manifest=m)


def test_archive_members_are_checked_too(tmp_path):
    m = fake.write_cifar(tmp_path, "cifar10", n_train=10, n_test=5, extracted=False)
    m["cifar-10-batches-py/test_batch"] = "0" * 32
    with pytest.raises(FormatError, match=r"member 'cifar-10-batches-py/test_batch'.*expected 0000"):
        load("cifar10", tmp_path, manifest=m)


# ------------------------------------------------------------------------ restricted unpickler


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(tmp_path, payload: bytes) -> dict:
    m = fake.write_cifar(tmp_path, "cifar10", n_train=10, n_test=5, archive=False)
    (tmp_path / BATCH1).write_bytes(payload)
    m[BATCH1] = md5_bytes(payload)
    return m


def test_a_crafted_pickle_raises_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Boom(marker), "labels": []}, protocol=2)
    m = _plant(tmp_path, payload)
    with pytest.raises(UnsafePickleError, match=r"data_batch_1: pickle refers to (posix|os|nt)\.system"):
        load("cifar10", tmp_path, manifest=m)
    assert not marker.exists()
    # The same file under the real checksum is rejected before it is unpickled.
    m[BATCH1] = "c99cafc152244af753f735de768cd75f"
    with pytest.raises(ChecksumError):
        load("cifar10", tmp_path, manifest=m)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1;\x85R.",
    b"\x80\x02c__builtin__\nexec\nU\x04passq\x00\x85R.",
    pickle.dumps(b"bytes via _codecs.encode", protocol=2),
    b"\x80\x02cnumpy\ndtype\nU\x02O8\x89\x88\x87R.",
])
def test_only_the_numpy_reconstruction_names_are_allowed(payload):
    with pytest.raises(UnsafePickleError):
        safe_unpickle(payload, "x")


def test_new_and_old_numpy_module_paths_both_load():
    a = np.arange(3072 * 2, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    old = dumps_like_cifar({"data": a, "labels": [1, 2]})
    new = old.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n")
    assert new != old
    for raw in (old, new):
        out = safe_unpickle(raw, "x")
        assert np.array_equal(out["data"], a) and out["labels"] == [1, 2]


def test_a_garbled_pickle_is_a_format_error():
    with pytest.raises(FormatError, match="not a readable CIFAR batch"):
        safe_unpickle(b"\x80\x02}q\x00(U\x04data", "x")


def test_tar_members_outside_the_expected_names_are_never_read(tmp_path):
    # An archive that also holds "../evil" and an absolute path: the loader reads only the
    # expected members from memory, and writes nothing.
    files = fake.cifar_files("cifar10", n_train=10, n_test=5, extracted=True, archive=False)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, data in {**files, "../evil": b"x", "/tmp/abs_evil": b"y"}.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    arch = gzip.compress(buf.getvalue(), mtime=0)
    (tmp_path / "root").mkdir()
    (tmp_path / "root/cifar-10-python.tar.gz").write_bytes(arch)
    m = {**{k: md5_bytes(v) for k, v in files.items()}, "cifar-10-python.tar.gz": md5_bytes(arch)}
    assert len(load("cifar10", tmp_path / "root", manifest=m).y) == 10
    assert sorted(os.listdir(tmp_path)) == ["root"]
    assert os.listdir(tmp_path / "root") == ["cifar-10-python.tar.gz"]
