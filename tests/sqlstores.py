"""Real PostgreSQL and MariaDB servers for tests: started once per session on 127.0.0.1, free ports, tmp folders.

No mocks: the point is to see what a production MLflow tracking store does with our data. The Debian packages are
installed with apt-get when their binaries are missing (CI is a clean clone on a Debian machine, running as root);
without root and without the binaries the fixture fails with the reason (or skips, outside CI).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MARIADBD = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")
START_TIMEOUT = 60


class DatabaseUnavailable(RuntimeError):
    pass


def unavailable(reason: str) -> None:
    """A database that cannot start fails the test in CI (it must never pass by skipping), skips elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"cannot start the test database: {reason}", pytrace=False)
    pytest.skip(f"cannot start the test database: {reason}")


def ensure_packages(binary: Path, packages: list[str]) -> None:
    if binary.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DatabaseUnavailable(f"{binary} is missing; install {' '.join(packages)} (apt-get, as root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # The package's own service start is refused in containers (policy-rc.d) and not wanted: we start our own.
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        update = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise DatabaseUnavailable(f"apt-get install {' '.join(packages)} failed: "
                                      f"{(update.stderr + done.stderr)[-1500:]}")
    if not binary.exists():
        raise DatabaseUnavailable(f"{binary} is still missing after installing {' '.join(packages)}")


def _wait(check, what: str, log: Path, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DatabaseUnavailable(f"{what} exited ({proc.returncode}): {_tail(log)}")
        try:
            check()
            return
        except Exception as exc:  # not ready yet: the error says why
            last = exc
        time.sleep(0.2)
    raise DatabaseUnavailable(f"{what} not ready in {START_TIMEOUT} s ({last}): {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"


class PostgresServer:
    """initdb + postgres as an unprivileged user (postgres refuses root): `postgres` when we are root."""

    scheme = "postgresql"

    def __init__(self, port: int, durable: bool = False) -> None:
        self.port = port
        # A benchmark may want a production server's durability; tests throw the data away.
        self.durable = durable
        self.user = "neptune"
        self.password = secrets.token_hex(8)
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._run_as: list[str] = []

    def start(self) -> None:
        ensure_packages(PG_BIN / "postgres", ["postgresql-15"])
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
                owner = pwd.getpwnam("postgres")
            self._run_as = ["runuser", "-u", "postgres", "--"]
        # Not under pytest's basetemp: that is mode 0700 and root's, so the postgres user could not enter it.
        self.root = Path(tempfile.mkdtemp(prefix="neptune-test-pg-"))
        if os.geteuid() == 0:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        data = self.root / "data"
        init = subprocess.run(
            [*self._run_as, str(PG_BIN / "initdb"), "-D", str(data), "-U", self.user, "--pwfile", str(pwfile),
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8"],
            capture_output=True, text=True, timeout=120,
        )
        if init.returncode != 0:
            raise DatabaseUnavailable(f"initdb failed: {init.stderr[-1500:]}")
        log = self.root / "postgres.log"
        # fsync off: a test database is thrown away, and the disk is shared with other jobs.
        fast = [] if self.durable else ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c",
                                        "full_page_writes=off"]
        self.proc = subprocess.Popen(
            [*self._run_as, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}", *fast,
             "-c", "max_connections=200"],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
        )
        _wait(lambda: self._connect("postgres").close(), "postgres", log, self.proc)

    def _connect(self, database: str):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                               dbname=database, autocommit=True, connect_timeout=5)

    def create_database(self, name: str) -> str:
        with self._connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def uri(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def execute(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        with self._connect(database) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT is postgres' "fast" shutdown: connections are closed, no recovery needed (nor wanted).
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


class MariadbServer:
    """mariadb-install-db + mariadbd in a tmp folder, as the current user (`--user=root` when root)."""

    scheme = "mysql+pymysql"

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.user = "neptune"
        self.password = secrets.token_hex(8)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    def start(self) -> None:
        ensure_packages(MARIADBD, ["mariadb-server"])
        self.root.mkdir(parents=True, exist_ok=True)
        data = self.root / "data"
        user = ["--user=root"] if os.geteuid() == 0 else []
        init = subprocess.run(
            [str(MARIADB_INSTALL_DB), "--no-defaults", *user, f"--datadir={data}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, timeout=180,
        )
        if init.returncode != 0:
            raise DatabaseUnavailable(f"mariadb-install-db failed: {(init.stdout + init.stderr)[-1500:]}")
        log = self.root / "mariadb.log"
        # --no-defaults: the machine's /etc/mysql config is not ours. The server character set is what Debian's
        # and MySQL 8's packages configure (utf8mb4); a store created as latin1 cannot hold Neptune's names.
        self.proc = subprocess.Popen(
            [str(MARIADBD), "--no-defaults", *user, f"--datadir={data}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--pid-file={self.root / 'mysqld.pid'}",
             f"--log-error={log}", "--skip-name-resolve", "--character-set-server=utf8mb4",
             "--collation-server=utf8mb4_general_ci", "--innodb-flush-log-at-trx-commit=0",
             "--innodb-buffer-pool-size=128M", "--innodb-fast-shutdown=2", "--max-connections=300", "--skip-log-bin"],
            stdout=open(self.root / "stdout.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True,
        )
        _wait(lambda: self._root_connect().close(), "mariadbd", log, self.proc)
        with self._root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}'")
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'%'")

    def _root_connect(self):
        import pymysql

        return pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=5, autocommit=True)

    def _connect(self, database: str | None = None):
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                               database=database, connect_timeout=5, autocommit=True, charset="utf8mb4")

    def create_database(self, name: str, collation: str | None = None) -> str:
        with self._connect() as conn, conn.cursor() as cur:
            spec = f" CHARACTER SET utf8mb4 COLLATE {collation}" if collation else ""
            cur.execute(f"CREATE DATABASE `{name}`{spec}")
        return self.uri(name)

    def uri(self, database: str) -> str:
        return f"mysql+pymysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def execute(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        with self._connect(database) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                # The data is thrown away: --innodb-fast-shutdown=2 skips flushing, so this takes a second.
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
