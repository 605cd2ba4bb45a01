"""Start and stop a private PgBouncer (transaction pooling) for a test, in a temp dir.

Needs the Debian package ``pgbouncer`` (``scripts/ci_pgbouncer.sh`` installs it). As
root, PgBouncer refuses to run unless told to drop privileges: it runs as ``nobody``.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

CONFIG = """\
[databases]
{database} = host={db_host} port={db_port} dbname={database} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = {user}
stats_users = {user}
pool_mode = transaction
max_client_conn = 200
default_pool_size = 3
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )


class PgBouncer:
    """Context manager: a pgbouncer on 127.0.0.1:``listen_port`` in front of ``database``,
    logging in to PostgreSQL as ``user``; ``served_transactions()`` reads its SHOW STATS."""

    def __init__(self, _unused_tmp, *, db_host, db_port, database, user, listen_port):
        self.port = listen_port
        # As root pgbouncer must drop privileges: to 'nobody', or, for a Unix-socket
        # server (the embedded one), to the owner of the socket directory, who can reach it.
        self.run_as = "nobody"
        if str(db_host).startswith("/"):
            import pwd

            self.run_as = pwd.getpwuid(os.stat(db_host).st_uid).pw_name
        self.database, self.user = database, user
        self.dir = Path(tempfile.mkdtemp(prefix="gl-pgbouncer-"))
        os.chmod(self.dir, 0o777)  # readable/writable after dropping to 'nobody'
        (self.dir / "userlist.txt").write_text(f'"{user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            CONFIG.format(
                database=database,
                db_host=db_host,
                db_port=db_port,
                user=user,
                port=listen_port,
                dir=self.dir,
            )
        )
        for f in self.dir.iterdir():
            os.chmod(f, 0o644)
        self.proc = None

    def __enter__(self):
        binary = pgbouncer_binary()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (scripts/ci_pgbouncer.sh)")
        cmd = [binary]
        if os.geteuid() == 0:
            cmd += ["-u", self.run_as]
        cmd.append(str(self.dir / "pgbouncer.ini"))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (
                    (self.dir / "pgbouncer.log").read_text()
                    if (self.dir / "pgbouncer.log").exists()
                    else ""
                )
                raise RuntimeError(f"pgbouncer exited: {self.proc.stdout.read()!r} {log}")
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=self.port, dbname=self.database, user=self.user
                ) as conn:
                    conn.execute("SELECT 1")
                return self
            except psycopg.OperationalError:
                time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError("pgbouncer did not start")

    def served_transactions(self) -> int:
        """``total_xact_count`` of our database from the admin console's ``SHOW STATS``
        (simple query protocol, hence psycopg's ``ClientCursor``)."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, dbname="pgbouncer", user=self.user, autocommit=True
        ) as conn:
            cursor = psycopg.ClientCursor(conn)
            cursor.execute("SHOW STATS")
            names = [d.name for d in cursor.description]
            for row in cursor.fetchall():
                stats = dict(zip(names, row, strict=True))
                if stats["database"] == self.database:
                    return int(stats["total_xact_count"])
        raise AssertionError(f"no pgbouncer stats for {self.database}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
