"""`make demo` never deletes what it did not write, and stops within seconds on SIGTERM or SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.demo_out import MARK, ForeignFiles, prepare, remove

ROOT = Path(__file__).resolve().parent.parent


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "thesis.docx").write_text("years of work")
    with pytest.raises(ForeignFiles, match=r"thesis\.docx.*nothing was deleted"):
        prepare(tmp_path)
    with pytest.raises(ForeignFiles):
        remove(tmp_path)
    assert (tmp_path / "thesis.docx").read_text() == "years of work" and not (tmp_path / MARK).exists()


def test_a_former_runs_folder_is_cleared_of_its_own_files_only_and_a_stranger_among_them_stops_it(tmp_path):
    out = prepare(tmp_path / "out")
    (out / "reports").mkdir()
    (out / "catalog.sqlite").write_text("old")
    prepare(out)
    assert sorted(p.name for p in out.iterdir()) == [MARK]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ForeignFiles, match="notes.txt"):
        prepare(out)
    assert (out / "notes.txt").exists()
    (out / "notes.txt").unlink()
    remove(out)
    assert not out.exists()


def test_make_demo_on_a_home_folder_deletes_nothing(tmp_path):
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "include.demo", "--out", str(home)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT}"), timeout=120)
    assert done.returncode == 2 and "holds files this demo did not write (Documents)" in done.stderr
    assert [p.name for p in home.iterdir()] == ["Documents"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_demo_the_fleet_and_airflow_within_seconds(tmp_path, signum):
    out = tmp_path / "out"
    demo = subprocess.Popen([sys.executable, "-m", "include.demo", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT}"),
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "catalog.sqlite").exists():  # the backups are under way
        assert demo.poll() is None and time.monotonic() < deadline, demo.stderr.read()
        time.sleep(0.2)
    os.killpg(demo.pid, signum)  # as `timeout` and a terminal's Ctrl-C do: the whole process group
    began = time.monotonic()
    _, stderr = demo.communicate(timeout=60)
    assert time.monotonic() - began < 15
    assert demo.returncode == 128 + signum, stderr[-2000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    leftovers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert leftovers == []  # the fleet (its command line names DEMO_OUT) is gone too
