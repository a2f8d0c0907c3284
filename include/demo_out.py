"""DEMO_OUT, the folder a demo run writes, and how a run is stopped.

A run never deletes what it did not create: a folder that holds anything but a former run's
own files (named below, and marked by MARK) is refused with a message that names them. SIGTERM
and SIGINT stop the run and every process it started within seconds; it then exits non-zero.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MARK = ".hyperv-backup-demo"
OWN = frozenset({MARK, "catalog.sqlite", "sim-state.json", "sim-journal.jsonl", "inventory.yaml", "scenario.yaml", "reports", "mail",
                 "certs", "airflow", "airflow-home", "outage-story.json", "cluster.json", "preflight.json",
                 "sim-state-before-restore.json"})


class ForeignFiles(Exception):
    """DEMO_OUT holds files a demo run did not write."""


def prepare(out: Path) -> Path:
    """Create `out`, or clear a former run's own files from it; refuse a folder that holds anything else."""
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise ForeignFiles(f"DEMO_OUT {out} is a file, not a folder; name a new or empty folder: make demo DEMO_OUT=...")
    entries = sorted(out.iterdir()) if out.exists() else []
    foreign = [entry.name for entry in entries if entry.name not in OWN]
    if entries and (foreign or not (out / MARK).exists()):
        names = foreign or [entry.name for entry in entries]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ForeignFiles(f"DEMO_OUT {out} holds files this demo did not write ({shown}); nothing was deleted. "
                           "Name a new or empty folder: make demo DEMO_OUT=...")
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARK).write_text("written by `make demo`: a later run replaces the files it wrote here, and only those\n")
    return out


def remove(out: Path) -> None:
    """`make clean`: delete a demo's folder (its own files, then the folder), never a folder of other files."""
    if out.exists():
        prepare(out)
        (out / MARK).unlink()
        out.rmdir()


@contextmanager
def stop_on_signals(what: str) -> Iterator[list[Callable[[], None]]]:
    """Within: SIGTERM or SIGINT stops this run and everything it started, within seconds, and exits 128 + the
    signal's number, as a shell reports it. The handler does not rely on `finally` blocks (code running at the
    signal, an Airflow client call among them, may catch what it raises): it stops the run's child processes
    (the simulated fleet, Airflow's components and their tasks) itself, and runs the stoppers the run added
    to the list it is given (servers that detach from their parent, as PostgreSQL's does), then leaves."""
    stoppers: list[Callable[[], None]] = []
    def stop(signum, frame):
        import psutil

        print(f"stopped by {signal.Signals(signum).name}: {what} stopped with it", file=sys.stderr, flush=True)
        children = psutil.Process().children(recursive=True)
        for child in children:
            try:
                child.terminate()
            except psutil.NoSuchProcess:  # the signal went to the whole process group: it may have ended already
                pass
        _, alive = psutil.wait_procs(children, timeout=5)
        for child in alive:
            child.kill()
        for stopper in stoppers:
            try:
                stopper()
            except Exception:  # noqa: BLE001 - the others still run; the exit follows
                pass
        os._exit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stoppers
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    try:
        remove(Path(sys.argv[1]))
    except ForeignFiles as error:
        sys.exit(f"error: {error}")
