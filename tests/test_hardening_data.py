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
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cap(1536)  # a safety net: a full decompression would need 1 GiB
    try:
        load("mnist", root)
        print(json.dumps({"error": None}))
    except ChecksumError as err:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
