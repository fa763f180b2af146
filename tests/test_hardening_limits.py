"""Unbounded reads and limits: spec files that are not regular UTF-8 files of at most 1 MiB,
thread counts beyond the cores, models and data sets too big for memory, numbers without a
finite range: each a one-line error and a non-zero exit, in bounded time and memory."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from resdyn._checks import max_threads
from resdyn.sweeps import SpecError, parse_spec
from resdyn.sweeps.spec import MAX_SPEC_BYTES, read_spec_text

# Runs `resdyn ARGS` in a fresh interpreter and reports its peak resident memory (KiB) last.
RUNNER = """
import resource, sys
from resdyn.cli.main import main
def peak_kib():  # this process's own peak (ru_maxrss would include the parent's across exec)
    return int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM")))
try:
    main(sys.argv[1:], prog_name="resdyn")
finally:
    print("MAXRSS", peak_kib(), file=sys.stderr)
"""


def _resdyn(tmp_path: Path, *args: str) -> tuple[int, list[str], int]:
    """Exit status, the non-empty output lines (stderr and stdout) and the peak memory in MiB of
    `resdyn ARGS` run in tmp_path, within 30 s."""
    res = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True,
                         timeout=30, cwd=tmp_path)
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    rss = int(err.pop()[len("MAXRSS "):]) // 1024
    lines = err + [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert "Traceback" not in res.stderr
    return res.returncode, lines, rss


SPEC = """
name = "limits"
[data]
name = "two_spirals"
{data}
[model]
family = "resnet"
width = {width}
depth = {depth}
[train]
steps = 2
[sweep]
sample_size = [8]
[run]
lease_seconds = {lease}
"""


def _spec(tmp_path: Path, depth: int = 2, lease: str = "900", data: str = "", width: int = 4) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(SPEC.format(depth=depth, lease=lease, data=data, width=width))
    return path


def _one_error(tmp_path: Path, *args: str, want: str) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    code, lines, rss = _resdyn(tmp_path, *args)
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert want in lines[0], lines[0]
    assert rss < 500, f"{rss} MiB"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written (no runs/)
    return lines[0]


def test_dev_zero_as_a_spec_is_refused_without_reading_it(tmp_path):
    _one_error(tmp_path, "run", "/dev/zero", want="is a device; a spec must be a regular TOML file")


def test_a_fifo_as_a_spec_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "spec.toml"
    os.mkfifo(fifo)
    _one_error(tmp_path, "run", str(fifo), want="is a FIFO; a spec must be a regular TOML file")
    # The status command's --spec reads it the same way.
    from resdyn.sweeps import Store
    Store(tmp_path / "s.sqlite").close()
    code, lines, _ = _resdyn(tmp_path, "status", str(tmp_path / "s.sqlite"), "--spec", str(fifo))
    assert code == 1 and lines == [f"error: spec {fifo} is a FIFO; a spec must be a regular TOML file"]


def test_a_fifo_read_in_process_returns_at_once(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    errors = []

    def read() -> None:
        try:
            read_spec_text(fifo)
        except SpecError as err:
            errors.append(str(err))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert errors == [f"spec {fifo} is a FIFO; a spec must be a regular TOML file"]


def test_a_spec_that_is_not_utf8_is_one_error(tmp_path):
    path = tmp_path / "s.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    _one_error(tmp_path, "run", str(path), want="is not UTF-8 text (byte 11 is 0xe9)")


def test_a_spec_over_one_mib_is_one_error(tmp_path):
    path = tmp_path / "s.toml"
    path.write_bytes(b"# " + b"x" * MAX_SPEC_BYTES + b"\n")
    _one_error(tmp_path, "run", str(path), want="a spec may be at most 1,048,576 bytes")


def test_a_folder_as_a_spec_is_one_error(tmp_path):
    (tmp_path / "d").mkdir()
    code, lines, _ = _resdyn(tmp_path, "run", str(tmp_path / "d"))
    assert code != 0 and any("is a directory" in ln.lower() or "is a folder" in ln for ln in lines)


def test_threads_beyond_the_cores_are_refused(tmp_path):
    spec = _spec(tmp_path)
    code, lines, _ = _resdyn(tmp_path, "run", str(spec), "--threads", "10000")
    assert code == 2 and f"10000 is not in the range 1<=x<={max_threads()}" in lines[-1], lines
    assert not (tmp_path / "runs").exists()


def test_a_huge_depth_is_refused_with_its_memory_estimate(tmp_path):
    line = _one_error(tmp_path, "run", str(_spec(tmp_path, depth=1_000_000, width=16)),
                      want="spec key model.depth: a model of width 16 and depth 1000000")
    assert "GiB" in line and "at most 16.0 GiB is allowed" in line


@pytest.mark.parametrize(("data", "key"), [
    ('pool_size = 1_000_000_000', "data.pool_size"),
    ('test_size = 2_000_000_000', "data.test_size"),
])
def test_a_huge_pool_or_test_set_is_refused_with_its_memory_estimate(tmp_path, data, key):
    line = _one_error(tmp_path, "run", str(_spec(tmp_path, data=data)), want=f"spec key {key}: a data set")
    assert "GiB" in line and "at most 4.0 GiB" in line


@pytest.mark.parametrize(("options", "key"), [
    ({"pool_size": 100_000_000}, "data.pool_size"),
    ({"hidden": 1_000_000_000}, "data.hidden"),
    ({"dim": 100_000_000}, "data.dim"),
])
def test_a_huge_teacher_is_refused_with_its_memory_estimate(options, key):
    raw = {"data": {"name": "teacher", **options}, "model": {"family": "resnet"}, "train": {},
           "sweep": {"sample_size": [8]}}
    with pytest.raises(SpecError, match=rf"^spec key {key}: a data set .* GiB; at most 4.0 GiB"):
        parse_spec(raw)
    raw["data"] = {"name": "teacher", "pool_size": 4096, "hidden": 64}
    parse_spec(raw)  # an ordinary teacher parses


def test_a_lease_of_1e308_seconds_is_one_error_and_a_nonzero_exit(tmp_path):
    _one_error(tmp_path, "run", str(_spec(tmp_path, lease="1e308")),
               want="spec key run.lease_seconds: must be a finite number of seconds >= 5 and <= 2.592e+06")


@pytest.mark.parametrize(("table", "key", "value"), [
    ("run", "checkpoint_seconds", 1e300), ("train", "lr", 1e300), ("train", "eps", 1e200),
    ("data", "noise", 1e100),
])
def test_every_float_has_a_finite_range(table, key, value):
    raw = {"data": {"name": "two_spirals"}, "model": {"family": "resnet"}, "train": {},
           "sweep": {"sample_size": [8]}}
    raw.setdefault(table, {})[key] = value
    with pytest.raises(SpecError, match=rf"^spec key {table}.{key}: must be a .*number"):
        parse_spec(raw)


def test_a_group_too_big_for_this_machine_is_refused_before_training(tmp_path):
    from resdyn.sweeps.spec import check_fits_memory, model_memory

    raw = {"data": {"name": "two_spirals"}, "model": {"family": "resnet", "width": 256, "depth": 64},
           "train": {}, "sweep": {"sample_size": [64], "seed": list(range(40))}}
    spec = parse_spec(raw)
    one = model_memory(spec.model, spec.sweep, spec.train)
    check_fits_memory(spec, 40, available=40 * one.total)  # fits
    with pytest.raises(SpecError, match=r"^spec key run.group_size: 40 models trained at once would "
                       r"need about .* set run.group_size to at most (\d+)$") as err:
        check_fits_memory(spec, 40, available=10 * one.total)
    most = int(str(err.value).rsplit(" ", 1)[1])
    assert 9 <= most < 40
    with pytest.raises(SpecError, match=r"^spec key model.width: a model of width 256 and depth 64 "
                       r"trained on 64 rows would need about .*; this machine has"):
        check_fits_memory(spec, 40, available=one.total // 2)
