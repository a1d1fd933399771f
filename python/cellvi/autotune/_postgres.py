"""A throwaway local PostgreSQL server (Debian's ``postgresql`` package: initdb, pg_ctl,
createdb) for the tests and benchmarks of multi-worker searches, and for trying the
several-machines set-up on one machine. Not for production: no password, data in a temporary
directory, removed at the end."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Iterator


def postgres_bin() -> str | None:
    """The directory of PostgreSQL's server programs, or None when they are not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_postgres(database: str = "cellvi_tune") -> Iterator[str]:
    """Start a PostgreSQL server on a free 127.0.0.1 port with an empty ``database``; yields
    its URL (``postgresql://tuner@127.0.0.1:PORT/database``) and stops and removes the server
    at the end.

    PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user.

    Examples
    --------
    >>> from cellvi.autotune._postgres import local_postgres
    >>> with local_postgres() as url:
    ...     res = run_autotune(cellvi.SCVI, adata, storage=url, n_jobs=2, max_epochs=10)
    """
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed: apt install postgresql")
    as_user: list[str] = []
    tmp = tempfile.mkdtemp(prefix="cellvi-pg-")
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError("running as root, and there is no 'postgres' user to run the server as") from None
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    data, log, port = os.path.join(tmp, "data"), os.path.join(tmp, "server.log"), _free_port()

    def run(*cmd):
        res = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{os.path.basename(cmd[0])} failed: {res.stderr.strip() or res.stdout.strip()}")

    started = False
    try:
        run(os.path.join(bindir, "initdb"), "-D", data, "-U", "tuner", "-A", "trust", "--no-sync")
        # -F: no fsync (a throwaway server); the unix socket goes into the temporary directory
        run(os.path.join(bindir, "pg_ctl"), "-D", data, "-l", log, "-w", "-t", "60",
            "-o", f"-h 127.0.0.1 -p {port} -k {tmp} -F", "start")
        started = True
        run(os.path.join(bindir, "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tuner", database)
        yield f"postgresql://tuner@127.0.0.1:{port}/{database}"
    finally:
        if started:
            subprocess.run([*as_user, os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
