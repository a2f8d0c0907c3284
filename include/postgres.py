"""A throwaway PostgreSQL server for tests and benchmarks: the catalog's other backend, run for real.

Uses Debian's server binaries (`make postgres` installs them). The cluster lives in a folder of
its own, listens on 127.0.0.1 only, trusts local connections (nothing else can reach it), and is
stopped and deleted by `stop()`. PostgreSQL refuses to run as root, so under root it runs as the
`postgres` account the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def binaries() -> Path:
    """The folder of `initdb` and `pg_ctl`: on PATH, else Debian's /usr/lib/postgresql/N/bin (newest)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # a link on PATH: its folder holds the other binaries (pg_dump)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not versions:
        raise RuntimeError("PostgreSQL's server is not installed: run `make postgres` (apt-get install postgresql)")
    return Path(versions[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    folder: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new database on this server; its URL."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE runs outside a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url_for(name)

    def dump(self, database: str, path: Path) -> None:
        """A database as plain SQL (pg_dump): what it held, kept after the throwaway server is gone."""
        done = subprocess.run([str(binaries() / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database],
                              capture_output=True, check=True)
        path.write_bytes(done.stdout)

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(binaries() / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Server:
    folder = Path(tempfile.mkdtemp(prefix="hyperv-backup-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    bin_dir, port = binaries(), _free_port()
    run = {"capture_output": True, "text": True, "check": True}
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust",
                    "--encoding=UTF8", "--locale=C.UTF-8"], **run)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-o", options, "-l", str(folder / "log"),
                    "-w", "start"], **run)
    return Server(folder, port, as_user)
