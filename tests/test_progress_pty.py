"""`resdyn run` on a terminal: the bar moves within a group and shows a real ETA."""

import os
import pty
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

SPEC = """
name = "pty-progress"
[data]
name = "two_spirals"
[model]
family = "resnet"
width = 8
depth = 4
activation = "tanh"
[train]
steps = 600
lr = 1e-2
[sweep]
data = [{ name = "two_spirals" }, { name = "digits" }]
sample_size = [64, 128]
seed = [0]
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_run_on_a_terminal_shows_progress_within_a_group_and_an_eta(tmp_path):
    import fcntl
    import termios

    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "TERM": "xterm",
           "COLUMNS": "200"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "resdyn.cli", "run", str(spec), "--store",
                             str(tmp_path / "s.sqlite"), "--threads", "1"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 600  # a guard against a hung child, not a timing assertion
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data.decode(errors="replace"))
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    text = ANSI.sub("", "".join(chunks))
    assert proc.returncode == 0, text[-2000:]
    # Every redraw of the bar, in order; the first group's are those with 0 cells finished.
    frames = [f for f in re.split(r"[\r\n]+", text) if "pty-progress" in f and " cells" in f]
    first_group = [f for f in frames if re.search(r"\b0/4 cells", f)]
    steps = [int(m.group(1)) for f in first_group for m in [re.search(r"step (\d+)/600", f)] if m]
    assert len(set(steps)) >= 3, first_group[:5]  # the bar moved several times within group 1
    assert steps == sorted(steps)
    losses = {m.group(1) for f in first_group for m in [re.search(r"loss ([0-9.e+-]+)", f)] if m}
    assert len(losses) >= 2  # the latest mean loss changes too
    etas = [m.group(1) for f in first_group for m in [re.search(r"ETA (\d+:\d\d:\d\d)", f)] if m]
    assert etas, first_group[-3:]  # a real ETA (not -:--:--) before any group has finished
    assert "pty-progress: 4 cells; 0 already in the store, 4 trained now" in text.replace("\r", "")
