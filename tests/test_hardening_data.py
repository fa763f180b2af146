"""Untrusted bytes: crafted and mutated pickles, decompression bombs, IDX headers that overflow.

Whatever might crash the interpreter or eat the machine runs in a subprocess with its address
space capped (RLIMIT_AS), so a crash or a bomb fails the test instead of taking pytest down.
"""

import json
import struct
import subprocess
import sys
import textwrap

import pytest

from resdyn.data.formats import parse_idx
from resdyn.data.integrity import FormatError

# Sets the address-space cap of a child process to its current size plus CAP_MB.
LIMIT = textwrap.dedent("""
    import resource
    def peak_kib():  # this process's own peak (ru_maxrss would include the parent's across exec)
        return int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM")))
    def cap(extra_mb):
        size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
        lim = size + extra_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
""")


def _child(code: str, *args: str, timeout: float = 120) -> dict:
    res = subprocess.run([sys.executable, "-c", LIMIT + textwrap.dedent(code), *args],
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"child died with status {res.returncode}: {res.stderr[-2000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


EXPLOITS = textwrap.dedent(r'''
    import json, sys
    from resdyn.data.formats import safe_unpickle
    from resdyn.data.integrity import FormatError, UnsafePickleError
    cap(512)
    P, D = b"\x80\x02", b"cnumpy\ndtype\n"
    R = b"cnumpy.core.multiarray\n_reconstruct\n"
    payloads = {
        # numpy's dtype state with a field whose type is the dtype itself: segfaults numpy.
        "self_referential_dtype": P + D + b"(U\x02u1\x89\x88tRq\x00(K\x03U\x01|N(U\x01atq\x01}q\x02"
            b"U\x01a(h\x00K\x00tsK\x01K\x01K\x10tb.",
        "void_dtype": P + D + b"(U\x02V8\x89\x88tR.",
        "object_dtype": P + D + b"(U\x02O8\x89\x88tR.",
        "object_flags": P + D + b"(U\x02u1\x89\x88tR(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb.",
        "reconstruct_object": P + R + b"(cnumpy\nndarray\nK\x00\x85U\x01Otq\x00R.",
        "reconstruct_subclass": P + R + b"(cnumpy\ndtype\nK\x00\x85U\x01btR.",
        "ndarray_called": P + b"cnumpy\nndarray\n(J\xff\xff\xff\x7f\x85tR.",
        "ndarray_newobj": P + b"cnumpy\nndarray\n(J\xff\xff\xff\x7f\x85t\x81.",
        "list_holds_itself": P + b"]q\x00h\x00a.",
        "deep_nesting": P + b"]" * 200 + b"a" * 199 + b".",
        "deep_marks": P + b"(" * 200 + b".",
        "system_call": P + b"cposix\nsystem\n(X\x05\x00\x00\x00exit 7tR.",
        "ext_registry": P + b"\x82\x01.",
    }
    out = {}
    for name, data in payloads.items():
        try:
            safe_unpickle(data, "batch_x")
            out[name] = "loaded"
        except UnsafePickleError as err:
            out[name] = "unsafe: " + str(err)
        except FormatError as err:
            out[name] = "format: " + str(err)
    print(json.dumps(out))
''')


def test_crafted_pickles_are_refused_without_crash_or_allocation():
    out = _child(EXPLOITS)
    assert set(out) >= {"self_referential_dtype", "system_call", "deep_nesting"}
    for name, got in out.items():
        assert got.startswith("unsafe: batch_x: pickle"), (name, got)
    assert "numpy dtype state" in out["self_referential_dtype"]
    assert "only plain numeric dtypes" in out["void_dtype"] and "only plain numeric" in out["object_dtype"]
    assert "_reconstruct" in out["reconstruct_object"] and "calls ndarray" in out["ndarray_called"]
    assert "nests deeper" in out["deep_nesting"] and "limits" in out["deep_marks"]
    assert "refers to itself" in out["list_holds_itself"]
    assert "posix.system" in out["system_call"]


FUZZ = textwrap.dedent(r'''
    import json, os, random, sys
    import numpy as np
    from resdyn.data.formats import dumps_like_cifar, safe_unpickle
    from resdyn.data.integrity import FormatError, UnsafePickleError
    marker = sys.argv[1]
    rng = random.Random(int(sys.argv[2]))
    n = int(sys.argv[3])
    x = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    bases = [
        dumps_like_cifar({"batch_label": "training batch 1 of 5", "labels": [3, 1, 4, 1], "data": x,
                          "filenames": ["a.png", "b.png", "c.png", "d.png"]}),
        dumps_like_cifar({"fine_labels": [1, 2, 3, 4], "coarse_labels": [0, 1, 0, 1],
                          "data": x.astype(np.uint8)}),
        dumps_like_cifar({"label_names": ["airplane", "automobile"], "num_vis": 3072}),
    ]
    call = b"cposix\nsystem\n(X" + len("touch " + marker).to_bytes(4, "little") + \
        ("touch " + marker).encode() + b"tR"
    snippets = [call, b"cbuiltins\neval\n", b"cnumpy\ndtype\n", b"cnumpy\nndarray\n",
                b"cnumpy.core.multiarray\n_reconstruct\n", b"U\x02O8", b"U\x02V8", b"U\x02f8",
                b"R", b"b", b"\x81", b"\x92", b"\x82\x01", b"(", b"t", b")", b"]", b"}", b"a", b"e",
                b"s", b"u", b"\x85", b"\x86", b"\x87", b"h\x00", b"h\x05", b"q\x00", b"j\x00\x00\x00\x00",
                b"K\xff", b"J\xff\xff\xff\x7f", b"T\xff\xff\xff\x7f", b"X\xff\xff\xff\x7f", b"(" * 40,
                b"0", b"1", b"2", b"P", b"Q", b"N", b"\x88", b"\x89", b"\x8a\x08" + b"\xff" * 8, b"."]
    cap(1024)
    counts, other = {}, []
    for i in range(n):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            op, pos = rng.randrange(5), rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[pos:pos] = rng.choice(snippets)
            elif op == 2:
                del data[pos : pos + rng.randint(1, 16)]
            elif op == 3:
                data = data[: max(pos, 1)]
            else:
                data[pos : pos + 1] = bytes([rng.randrange(256)])
        try:
            safe_unpickle(bytes(data), "fuzz")
            kind = "loaded"
        except UnsafePickleError:
            kind = "unsafe"
        except FormatError:
            kind = "format"
        except BaseException as err:  # the test fails on any of these
            kind = "other"
            other.append(f"case {i}: {type(err).__name__}: {err}"[:300])
        counts[kind] = counts.get(kind, 0) + 1
    print(json.dumps({"counts": counts, "other": other[:10], "marker": os.path.exists(marker)}))
''')


def test_fuzz_the_restricted_unpickler_on_mutated_cifar_batches(tmp_path):
    marker = tmp_path / "executed"
    out = _child(FUZZ, str(marker), "20261202", "2500", timeout=300)
    counts = out["counts"]
    assert sum(counts.values()) == 2500
    assert out["other"] == [] and "other" not in counts, out["other"]
    assert out["marker"] is False and not marker.exists()
    # The mutations reach every outcome: some still load, many are refused either way.
    assert counts.get("loaded", 0) > 50 and counts.get("unsafe", 0) > 50 and counts.get("format", 0) > 500


BOMB = textwrap.dedent(r'''
    import json, resource, sys, zlib
    from pathlib import Path
    from resdyn.data import load
    from resdyn.data.integrity import ChecksumError
    root = Path(sys.argv[1])
    gz = root / "MNIST/raw/train-images-idx3-ubyte.gz"
    gz.parent.mkdir(parents=True)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 24)
    with open(gz, "wb") as f:
        f.write(z.compress(bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2))
        for _ in range(64):  # 1 GiB of zeros in about 1 MB
            f.write(z.compress(zeros))
        f.write(z.flush())
    del zeros
    size = gz.stat().st_size
    before = peak_kib()
    cap(1536)  # a safety net: a full decompression would need 1 GiB
    try:
        load("mnist", root)
        print(json.dumps({"error": None}))
    except ChecksumError as err:
        peak = peak_kib()
        print(json.dumps({"error": type(err).__name__, "message": str(err), "size": size,
                          "grew_kb": peak - before}))
''')


def test_a_decompression_bomb_that_fails_its_checksum_costs_bounded_memory(tmp_path):
    out = _child(BOMB, str(tmp_path), timeout=300)
    assert out["error"] == "ChecksumError", out
    assert "train-images-idx3-ubyte.gz" in out["message"] and "is corrupt" in out["message"]
    assert out["size"] < 4 * 2**20
    # Explaining the failure streamed a bounded prefix: the resident set grew by less than
    # 128 MiB, where decompressing the whole file would take 1 GiB.
    assert out["grew_kb"] < 128 * 1024


def test_an_idx_header_whose_sizes_overflow_64_bits_is_a_format_error():
    # 2**31 * 2**31 * 4 = 2**64: a 64-bit product wraps to 0 and would match an empty body.
    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 4)
    with pytest.raises(FormatError, match=r"header declares \(2147483648, 2147483648, 4\) = "
                       r"18446744073709551632 bytes, file has 16"):
        parse_idx(data, "images-idx3", 3)


# -- second round (issue 25, item 6): nested pickles, bombs behind a user's checksum, hostile files

NESTED = textwrap.dedent(r'''
    import json, resource, sys, time
    from resdyn.data.formats import safe_unpickle
    from resdyn.data.integrity import DataError
    cap(500)
    P = b"\x80\x02"
    def dup(n):  # n nested 2-tuples, each holding the previous one twice: 2**n leaves
        return P + b")" + b"2\x86" * n + b"."
    def memo(n):  # the same through the memo (BINPUT / BINGET)
        out = P + b")q\x00"
        for i in range(n):
            j = bytes([i % 256])
            out += b"h" + j + b"h" + j + b"\x86q" + bytes([(i + 1) % 256])
        return out + b"."
    def as_key(n):  # the nested tuple as a dict key: hashing it walks 2**n leaves
        return P + b"}" + b")" + b"2\x86" * n + b"Ns."
    def as_dtype_state(n):  # the nested tuple as a dtype state: its repr walks 2**n leaves
        return P + b"cnumpy\ndtype\n(U\x02u1\x89\x88tR)" + b"2\x86" * n + b"b."
    out = {}
    for name, make in [("dup", dup), ("memo", memo), ("key", as_key), ("dtype", as_dtype_state)]:
        for n in (27, 1000):
            data = make(n)
            t = time.monotonic()
            try:
                safe_unpickle(data, "batch")
                msg = "loaded"
            except DataError as err:
                msg = str(err)
            out[f"{name}{n}"] = {"size": len(data), "s": time.monotonic() - t, "msg": msg}
    out["maxrss_mb"] = peak_kib() / 1024
    print(json.dumps(out))
''')


def test_nested_tuple_pickles_at_27_and_1000_levels_are_refused_in_bounded_time_and_memory():
    out = _child(NESTED, timeout=60)
    assert out["dup27"]["size"] <= 120  # the 120-byte bomb of issue 25
    for name in ("dup", "memo", "key", "dtype"):
        for n in (27, 1000):
            case = out[f"{name}{n}"]
            assert case["s"] < 5, (name, n, case)
            assert case["msg"].startswith("batch: pickle") and "\n" not in case["msg"], case
    assert "more than 2000000 objects counted as a tree" in out["dup27"]["msg"]
    assert "more than 2000000 objects" in out["memo27"]["msg"]
    assert "nests deeper than 32" in out["dup1000"]["msg"] and "nests deeper" in out["memo1000"]["msg"]
    assert "tuple as a dict key" in out["key27"]["msg"]
    assert "dtype state (((...)" in out["dtype27"]["msg"] and len(out["dtype1000"]["msg"]) < 400
    assert out["maxrss_mb"] < 500


def _cli_child(code: str, *args: str, timeout: float = 120) -> dict:
    """Runs ``code`` (which defines CASES) through the resdyn CLI, each case with CliRunner under
    an address-space cap; returns per case the exit code, output, exception and time."""
    return _child(code + textwrap.dedent(r'''
        import json, resource, time, traceback
        from click.testing import CliRunner
        import numpy as np
        import torch
        from resdyn.cli.main import main
        import resdyn.data.download  # noqa: F401 - imported (and BLAS warmed up) before the cap
        np.ones((64, 64)) @ np.ones((64, 64))
        torch.ones(64, 64) @ torch.ones(64, 64)
        cap(500)
        out = {}
        for name, argv in CASES.items():
            t = time.monotonic()
            res = CliRunner().invoke(main, argv)
            exc = res.exception
            out[name] = {"code": res.exit_code, "output": res.output, "s": time.monotonic() - t,
                         "exc": None if exc is None or isinstance(exc, SystemExit) else
                         "".join(traceback.format_exception(exc))[-800:]}
        out["maxrss_mb"] = peak_kib() / 1024
        print(json.dumps(out))
    '''), *args, timeout=timeout)


def _one_line_failure(case: dict) -> str:
    """The FAILED line of a case that must end in a one-line error (and nothing else)."""
    assert case["exc"] is None, case["exc"]
    assert case["code"] == 1 and "Traceback" not in case["output"], case
    assert "Aborted!" not in case["output"], case
    failed = [ln for ln in case["output"].splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and case["output"].rstrip().endswith(failed[0]), case["output"]
    assert case["s"] < 30, case
    return failed[0]


HOSTILE_FILES = textwrap.dedent(r'''
    import gzip, hashlib, json, sys, zlib
    from pathlib import Path
    base = Path(sys.argv[1])
    NAMES = {"ti": "train-images-idx3-ubyte", "tl": "train-labels-idx1-ubyte",
             "si": "t10k-images-idx3-ubyte", "sl": "t10k-labels-idx1-ubyte"}
    def idx(ndim, shape, body):
        return bytes([0, 0, 8, ndim]) + b"".join(n.to_bytes(4, "big") for n in shape) + body
    good = {"ti": idx(3, (2, 28, 28), bytes(2 * 784)), "tl": idx(1, (2,), b"\x01\x02"),
            "si": idx(3, (1, 28, 28), bytes(784)), "sl": idx(1, (1,), b"\x03")}
    def bomb():  # declares 60000 images, then 1 GiB of zeros, about 1 MB compressed
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        parts = [z.compress(idx(3, (60000, 28, 28), b""))]
        zeros = bytes(1 << 24)
        parts += [z.compress(zeros) for _ in range(64)]
        return b"".join(parts) + z.flush()
    hostile = {  # case: (file key, gzip?, bytes)
        "truncated_idx": ("ti", False, good["ti"][:-100]),
        "wrong_magic": ("ti", False, b"\x01\x02\x08\x03" + good["ti"][4:]),
        "wrong_type": ("ti", False, b"\x00\x00\x0d\x03" + good["ti"][4:]),
        "huge_dims": ("ti", False, idx(3, (2**31, 2**31, 4), b"")),
        "huge_dims_gz": ("ti", True, gzip.compress(idx(3, (2**31, 2**31, 4), b""), mtime=0)),
        "header_cut": ("tl", False, b"\x00\x00\x08\x01\x00"),
        "not_gzip": ("ti", True, good["ti"]),
        "truncated_gz": ("ti", True, gzip.compress(good["ti"], mtime=0)[:-30]),
        # A gzip header, then a deflate block of the reserved type 11: "invalid block type".
        "corrupt_deflate": ("ti", True, gzip.compress(good["ti"], mtime=0)[:10] + b"\x07" + bytes(40)),
        "empty": ("tl", False, b""),
        "empty_gz": ("tl", True, b""),
        "gzip_bomb": ("ti", True, bomb()),
        "extra_bytes_gz": ("ti", True, gzip.compress(good["ti"] + bytes(1000), mtime=0)),
        "labels_out_of_range": ("tl", False, idx(1, (2,), b"\x01\xff")),
        "count_mismatch": ("tl", False, idx(1, (3,), b"\x01\x02\x03")),
    }
    CASES = {}
    for case, (key, gz, data) in hostile.items():
        root = base / case
        table = {}
        for k, body in good.items():
            rel = f"MNIST/raw/{NAMES[k]}"
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if k == key:
                rel += ".gz" if gz else ""
                path = root / rel
                body = data
            path.write_bytes(body)
            table[rel] = hashlib.md5(body).hexdigest()  # the user's manifest vouches for it
        (root / "m.json").write_text(json.dumps(table))
        CASES[case] = ["data", "verify", "mnist", "--root", str(root), "--manifest",
                       str(root / "m.json")]
    (base / "deep.json").write_text("[" * 100000 + "]" * 100000)
    CASES["deep_manifest"] = ["data", "verify", "mnist", "--root", str(base), "--manifest",
                              str(base / "deep.json")]
    CASES["fifo_manifest"] = ["data", "verify", "mnist", "--root", str(base), "--manifest",
                              "/dev/zero"]
''')


def test_hostile_idx_and_gzip_files_behind_a_matching_user_manifest_are_one_line_errors(tmp_path):
    out = _cli_child(HOSTILE_FILES, str(tmp_path), timeout=240)
    expect = {
        "truncated_idx": r"train-images-idx3-ubyte: IDX header declares \(2, 28, 28\) = 1584 bytes, "
                         r"file has 1484",
        "wrong_magic": r"not an IDX file \(magic bytes '01020803'",
        "wrong_type": r"IDX element type 0x0d, expected 0x08",
        "huge_dims": r"declares \(2147483648, 2147483648, 4\) = 18446744073709551632 bytes, file has "
                     r"16 \(at most 268435456 are allowed\)",
        "huge_dims_gz": r"ubyte.gz: IDX header declares .* more than the 268435456 allowed",
        "header_cut": r"IDX header cut short \(5 bytes",
        "not_gzip": r"ubyte.gz: not a readable gzip file",
        "truncated_gz": r"ubyte.gz: the gzip stream ends early",
        "corrupt_deflate": r"ubyte.gz: not a readable gzip file",
        "empty": r"train-labels-idx1-ubyte: not an IDX file \(magic bytes ''",
        "empty_gz": r"ubyte.gz: empty file",
        "gzip_bomb": r"ubyte.gz: decompresses to more than the 47040016 bytes its IDX header declares",
        "extra_bytes_gz": r"decompresses to more than the 1584 bytes its IDX header declares",
        "labels_out_of_range": r"mnist: train labels must lie in 0..9, found 255",
        "count_mismatch": r"mnist: train has 2 images but 3 labels",
        "deep_manifest": r"--manifest.*cannot read .*deep.json",
        "fifo_manifest": r"--manifest.*not a regular file",
    }
    import re

    for case, pattern in expect.items():
        if case.endswith("_manifest"):  # a usage error: click's own two lines, exit status 2
            c = out[case]
            assert c["exc"] is None and c["code"] == 2 and "Traceback" not in c["output"], c
            assert re.search(pattern, " ".join(c["output"].split())), (case, c["output"])
            continue
        line = _one_line_failure(out[case])
        assert re.search(pattern, line), (case, line)
    assert out["maxrss_mb"] < 500, out["maxrss_mb"]


HOSTILE_CIFAR = textwrap.dedent(r'''
    import gzip, hashlib, io, json, sys, tarfile
    from pathlib import Path
    from resdyn.data import fake
    base = Path(sys.argv[1])
    P = b"\x80\x02"
    def tgz(members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                if data is None:
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                else:
                    info.size = len(data)
                tar.addfile(info, None if data is None else io.BytesIO(data))
        return buf.getvalue()
    batch = "cifar-10-batches-py/data_batch_1"
    hostile = {
        "archive_not_tar": ("cifar-10-python.tar.gz", gzip.compress(b"not a tar" * 100, mtime=0)),
        "archive_not_gzip": ("cifar-10-python.tar.gz", b"plain bytes, no gzip"),
        "archive_truncated": ("cifar-10-python.tar.gz", tgz({batch: bytes(5000)})[:-200]),
        "archive_symlink": ("cifar-10-python.tar.gz", tgz({batch: None})),
        "batch_nested_27": (batch, P + b")" + b"2\x86" * 27 + b"."),
        "batch_nested_1000": (batch, P + b")" + b"2\x86" * 1000 + b"."),
        "batch_empty": (batch, b""),
        "batch_truncated": (batch, fake.cifar_files("cifar10", 10, 5)[batch][:-50]),
    }
    CASES = {}
    for case, (rel, data) in hostile.items():
        root = base / case
        archive = rel.endswith(".tar.gz")
        table = fake.write_cifar(root, "cifar10", n_train=10, n_test=5, archive=archive,
                                 extracted=not archive)
        (root / rel).write_bytes(data)
        table[rel] = hashlib.md5(data).hexdigest()
        (root / "m.json").write_text(json.dumps(table))
        CASES[case] = ["data", "verify", "cifar10", "--root", str(root), "--manifest",
                       str(root / "m.json")]
''')


def test_hostile_cifar_archives_and_batches_behind_a_matching_user_manifest_are_one_line_errors(
        tmp_path):
    import re

    out = _cli_child(HOSTILE_CIFAR, str(tmp_path), timeout=240)
    expect = {
        "archive_not_tar": r"cifar-10-python.tar.gz: not a readable .tar.gz archive",
        "archive_not_gzip": r"cifar-10-python.tar.gz: not a readable .tar.gz archive",
        "archive_truncated": r"cifar-10-python.tar.gz: (the gzip stream ends early|not a readable)",
        "archive_symlink": r"member 'cifar-10-batches-py/data_batch_1' is not a regular file",
        "batch_nested_27": r"data_batch_1: pickle holds more than 2000000 objects",
        "batch_nested_1000": r"data_batch_1: pickle nests deeper than 32",
        "batch_empty": r"data_batch_1: not a readable CIFAR batch pickle",
        "batch_truncated": r"data_batch_1: not a readable CIFAR batch pickle",
    }
    for case, pattern in expect.items():
        line = _one_line_failure(out[case])
        assert re.search(pattern, line), (case, line)
    assert out["maxrss_mb"] < 500, out["maxrss_mb"]
