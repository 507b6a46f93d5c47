"""Shared helpers for the integration tests: the real coingestd binary, a real database on the
private MariaDB that scripts/test starts (COINGEST_TEST_DB_*), and the fake API.

Python's standard library only. SQL goes through the `mariadb` command-line client, so no
driver is needed and the tests read the tables exactly as a user would.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SKIP = 77
# The source tree (ctest sets COINGEST_SOURCE_DIR; the benches may not).
SOURCE_DIR = os.environ.get("COINGEST_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def skip(why):
    print("SKIP:", why)
    sys.exit(SKIP)


def need_env():
    for k in ("COINGESTD", "FAKEAPI", "COINGEST_SOURCE_DIR"):
        if not os.environ.get(k):
            skip(f"{k} not set (run through ctest)")
    if not (os.environ.get("COINGEST_TEST_DB_SOCKET") or os.environ.get("COINGEST_TEST_DB_PORT")):
        skip("no test database (run through scripts/test)")


class Database:
    """A fresh database of its own on the test server."""

    def __init__(self, name, socket=None, port=None):
        self.name = name
        self.socket = socket or os.environ.get("COINGEST_TEST_DB_SOCKET")
        self.port = port or os.environ.get("COINGEST_TEST_DB_PORT", "3306")
        self.user = os.environ.get("COINGEST_TEST_DB_USER", "coingest")
        self.password = os.environ.get("COINGEST_TEST_DB_PASSWORD", "coingest")
        client = shutil.which("mariadb") or shutil.which("mysql")
        if not client:
            skip("no mariadb client")
        self.client = client
        self.sql(f"DROP DATABASE IF EXISTS `{name}`", db="")
        self.sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4", db="")

    def _args(self, db):
        args = [self.client, "--no-defaults", "-u", self.user, f"-p{self.password}", "--batch",
                "--skip-column-names", "--default-character-set=utf8mb4"]
        if self.socket:
            args += ["-S", self.socket]
        else:
            args += ["-h", "127.0.0.1", "-P", str(self.port)]
        if db:
            args.append(db)
        return args

    def sql(self, query, db=None):
        """Runs SQL and returns rows as lists of strings (NULL as None)."""
        db = self.name if db is None else db
        p = subprocess.run(self._args(db), input="SET time_zone='+00:00';\n" + query,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"SQL failed: {query[:200]}: {p.stderr.strip()}")
        rows = []
        for line in p.stdout.splitlines():
            rows.append([None if c == "NULL" else c for c in line.split("\t")])
        return rows

    def scalar(self, query):
        rows = self.sql(query)
        return rows[0][0] if rows else None

    def count(self, table, where="1"):
        return int(self.scalar(f"SELECT COUNT(*) FROM `{table}` WHERE {where}"))

    def drop(self):
        try:
            self.sql(f"DROP DATABASE IF EXISTS `{self.name}`", db="")
        except RuntimeError:
            pass


def free_port():
    """A loopback TCP port that was free a moment ago (for metrics_listen and the like)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def private_server(cmd, d, env=None):
    """scripts/mariadb-private CMD DIR (start, stop, kill, env) for a test's own server;
    returns the COINGEST_TEST_DB_* lines it printed as a dict. Raises on failure."""
    e = dict(os.environ)
    e.update(env or {})
    script = os.path.join(os.environ.get("COINGEST_SOURCE_DIR", "."), "scripts",
                          "mariadb-private")
    p = subprocess.run([script, cmd, d], capture_output=True, text=True, env=e)
    if p.returncode != 0:
        raise RuntimeError(f"mariadb-private {cmd}: {p.stderr}")
    out = {}
    for line in p.stdout.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


class FakeAPI:
    """tests/fakeapi/fakeapi.py on a loopback port; `script` names another fake of that folder
    (coinbase.py, coincap.py), served under `prefix` (its base_url's path)."""

    def __init__(self, workdir, *args, script=None, prefix="/api/v3"):
        name = os.path.splitext(script)[0] if script else "fakeapi"
        self.port_file = os.path.join(workdir, f"{name}.port")
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        path = os.environ["FAKEAPI"]
        if script:
            path = os.path.join(os.path.dirname(path), script)
        cmd = [sys.executable, path, "--port", "0", "--port-file", self.port_file]
        cmd += list(args)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(self.port_file) and open(self.port_file).read().strip():
                break
            if self.proc.poll() is not None:
                raise RuntimeError("fake API exited early")
            time.sleep(0.05)
        else:
            raise RuntimeError("fake API did not start")
        self.port = int(open(self.port_file).read().strip())
        self.base_url = f"http://127.0.0.1:{self.port}{prefix}"

    def control(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_control/{path}", data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return json.loads(text) if text.strip() else None

    def requests(self):
        log = self.control("GET", "log")
        return log.get("requests", log) if isinstance(log, dict) else log

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()  # reaped: no zombie left for the rest of the test


def daemon_sections(db, spool_dir, flush_interval="200ms", database_extra="",
                    shutdown_timeout="20s"):
    """The [daemon] and [database] sections of a config on the test database `db`, the
    daemon's metrics listener off; `database_extra` lines end [database]."""
    sock = f"socket = {db.socket}" if db.socket else f"host = 127.0.0.1\nport = {db.port}"
    return f"""[daemon]
log_level = info
metrics_listen =
spool_dir = {spool_dir}
shutdown_timeout = {shutdown_timeout}

[database]
{sock}
user = {db.user}
password = {db.password}
database = {db.name}
migrations_dir = {SOURCE_DIR}/sql
flush_interval = {flush_interval}
{database_extra}
"""


def write_config(path, db, base_url, spool_dir, extra="", universe="ids = all",
                 rate="6000/min", jobs=""):
    text = daemon_sections(db, spool_dir) + f"""
[source.coingecko]
base_url = {base_url}
plan = public
rate_limit = {rate}
burst = 10
timeout = 10s
max_retries = 3
backoff_base = 50ms
backoff_cap = 500ms

[universe]
{universe}
{extra}
{jobs}
"""
    with open(path, "w") as f:
        f.write(text)


def run_daemon(conf, *args, timeout=300, env=None):
    """Runs coingestd to completion; returns (returncode, stdout, stderr)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run([os.environ["COINGESTD"], "-c", conf, *args], capture_output=True,
                       text=True, timeout=timeout, env=e)
    return p.returncode, p.stdout, p.stderr


def start_daemon(conf, *args, env=None, stderr_path=None):
    e = dict(os.environ)
    if env:
        e.update(env)
    err = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL
    return subprocess.Popen([os.environ["COINGESTD"], "-c", conf, *args], stdout=subprocess.PIPE,
                            stderr=err, text=True, env=e)


def wait_for(pred, timeout=60, step=0.2, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class Check:
    """Collects failed assertions so a test reports every one, then exits non-zero."""

    def __init__(self):
        self.failed = 0
        self.passed = 0

    def __call__(self, cond, what):
        if cond:
            self.passed += 1
            print("ok:", what)
        else:
            self.failed += 1
            print("FAIL:", what)

    def eq(self, got, want, what):
        self(got == want, f"{what}: got {got!r}, want {want!r}")

    def done(self):
        print(f"{self.passed} passed, {self.failed} failed")
        if not self.failed:
            # A passing test leaves nothing behind; a failing one keeps its logs.
            for d in _tempdirs:
                shutil.rmtree(d, ignore_errors=True)
        sys.exit(1 if self.failed else 0)


_tempdirs = []


def tempdir(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    _tempdirs.append(d)
    return d
