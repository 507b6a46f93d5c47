"""TLS to the database (issue 12, item 11): [database] ssl_mode, ssl_ca, ssl_cert, ssl_key.

The test makes its own certificates with openssl (a CA, a server certificate for 127.0.0.1 and
localhost signed by it, a client certificate, and a second CA that signed nothing the server
uses), and runs its own private MariaDB (scripts/mariadb-private in a temp dir) with those
certificates and require_secure_transport=ON. `coingestd --migrate` is the client: it connects
with db_connect() exactly as the writers do, and exits 69 with the reason when it cannot.

1. Over TCP, preferred, required, verify_ca and verify_identity with the right CA connect (the
   server refuses any plaintext TCP client, so a success is a TLS connection); so does
   verify_identity with a client certificate.
2. verify_ca and verify_identity with the wrong CA are refused, with a message naming TLS,
   the mode and the CA file; disabled is refused by the server.
3. The same server restarted without TLS: required and verify_identity refuse it, preferred
   falls back to plaintext.
4. --check-config rejects keys that do not agree, with file and line.

Skips (exit 77) when openssl is not installed.
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

HERE = os.environ.get("COINGEST_SOURCE_DIR", ".")
EX_UNAVAILABLE = 69
EX_CONFIG = 78


def server(cmd, d, env=None):
    return h.private_server(cmd, d, env)


def openssl(*args, cwd):
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {p.stderr}")


def make_certs(d):
    """ca.pem/ca.key, server.pem/server.key (127.0.0.1, localhost), client.pem/client.key,
    and other-ca.pem, a CA that signed none of them."""
    for name in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN=coingest test {name}", "-keyout", f"{name}.key",
                "-out", f"{name}.pem", cwd=d)
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName = IP:127.0.0.1, DNS:localhost\n"
                "extendedKeyUsage = serverAuth\n")
    with open(os.path.join(d, "client.ext"), "w") as f:
        f.write("extendedKeyUsage = clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=coingest test {name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=d)


def main():
    h.need_env()
    if not shutil.which("openssl"):
        h.skip("openssl is not installed (apt-get install openssl): cannot make certificates")
    check = h.Check()
    work = h.tempdir("coingest-tls.")
    certs = os.path.join(work, "certs")
    os.mkdir(certs)
    make_certs(certs)

    def cert(name):
        return os.path.join(certs, name)
    dbdir = os.path.join(work, "db")
    tls_env = {"MARIADB_PRIVATE_SSL_CA": cert("ca.pem"),
               "MARIADB_PRIVATE_SSL_CERT": cert("server.pem"),
               "MARIADB_PRIVATE_SSL_KEY": cert("server.key"),
               "MARIADB_PRIVATE_REQUIRE_TLS": "1"}
    env = server("start", dbdir, tls_env)
    db = None
    try:
        # Set up through the socket, which require_secure_transport counts as secure.
        db = h.Database(f"tls_{os.getpid()}", socket=env["COINGEST_TEST_DB_SOCKET"])
        have_ssl = db.scalar("SELECT @@have_ssl")
        check.eq(have_ssl, "YES", "the private server runs with TLS")
        conf = os.path.join(work, "tls.conf")

        def write(tls):
            text = f"""[daemon]
metrics_listen =
spool_dir = {work}/spool

[database]
host = 127.0.0.1
port = {env['COINGEST_TEST_DB_PORT']}
user = {db.user}
password = {db.password}
database = {db.name}
migrations_dir = {HERE}/sql
connect_timeout = 3s
{tls}
"""
            with open(conf, "w") as f:
                f.write(text)

        def migrate(tls):
            write(tls)
            return h.run_daemon(conf, "--migrate", timeout=60)

        ca, other = cert("ca.pem"), cert("other-ca.pem")

        # 1. Connections that must work.
        good = {
            "preferred": "ssl_mode = preferred",
            "required": "ssl_mode = required",
            "verify_ca": f"ssl_mode = verify_ca\nssl_ca = {ca}",
            "verify_identity": f"ssl_mode = verify_identity\nssl_ca = {ca}",
            "verify_identity with a client certificate":
                f"ssl_mode = verify_identity\nssl_ca = {ca}\nssl_cert = {cert('client.pem')}\n"
                f"ssl_key = {cert('client.key')}",
        }
        for what, tls in good.items():
            rc, _, err = migrate(tls)
            check.eq(rc, 0, f"{what}: connects over TLS ({err.strip()[-300:]})")

        # 2. Connections that must be refused.
        rc, _, err = migrate(f"ssl_mode = verify_ca\nssl_ca = {other}")
        check.eq(rc, EX_UNAVAILABLE, "verify_ca with the wrong CA is refused")
        check("TLS failed" in err and "verify_ca" in err and "other-ca.pem" in err,
              f"the message names TLS, the mode and the CA ({err.strip()[-400:]})")
        rc, _, err = migrate(f"ssl_mode = verify_identity\nssl_ca = {other}")
        check.eq(rc, EX_UNAVAILABLE, "verify_identity with the wrong CA is refused")
        check("TLS failed" in err, f"the message names TLS ({err.strip()[-300:]})")
        rc, _, err = migrate("ssl_mode = disabled")
        check.eq(rc, EX_UNAVAILABLE, "disabled is refused by a server that requires TLS")
        # MariaDB 10.11 says "Access denied" (1045) to a plaintext client when it requires
        # secure transport; the message adds the likely cause.
        check("secure transport" in err and "ssl_mode = disabled" in err,
              f"the message points at TLS ({err.strip()[-400:]})")

        # 3. The same server without TLS.
        server("stop", dbdir)
        server("start", dbdir)
        rc, _, err = migrate("ssl_mode = required")
        check.eq(rc, EX_UNAVAILABLE, "required refuses a server without TLS")
        check("did not agree to TLS" in err, f"and says so ({err.strip()[-300:]})")
        rc, _, err = migrate(f"ssl_mode = verify_identity\nssl_ca = {ca}")
        check.eq(rc, EX_UNAVAILABLE, "verify_identity refuses a server without TLS")
        rc, _, err = migrate("ssl_mode = preferred")
        check.eq(rc, 0, f"preferred falls back to plaintext ({err.strip()[-300:]})")

        # 4. Keys that do not agree: --check-config, with file and line.
        bad = [
            ("ssl_mode = verify_ca", ":13: [database] ssl_mode: verify_ca needs ssl_ca"),
            ("ssl_mode = verify_identity", ":13: [database] ssl_mode: verify_identity needs"),
            ("ssl_mode = strict", ":13: [database] ssl_mode: \"strict\" is not an ssl_mode "
             "(disabled, preferred, required, verify_ca, verify_identity)"),
            (f"ssl_mode = required\nssl_ca = {ca}",
             ":14: [database] ssl_ca: ssl_ca is only used by ssl_mode = verify_ca"),
            (f"ssl_ca = {ca}", ":13: [database] ssl_ca: ssl_ca is only used by"),
            (f"ssl_mode = required\nssl_cert = {cert('client.pem')}",
             ":14: [database] ssl_cert: ssl_cert and ssl_key go together"),
            (f"ssl_mode = disabled\nssl_cert = {cert('client.pem')}\n"
             f"ssl_key = {cert('client.key')}",
             ":14: [database] ssl_cert: a client certificate is set but ssl_mode is disabled"),
            (f"ssl_mode = verify_ca\nssl_ca = {work}/missing.pem",
             f":14: [database] ssl_ca: cannot read \"{work}/missing.pem\""),
        ]
        for tls, want in bad:
            write(tls)
            rc, out, err = h.run_daemon(conf, "--check-config", timeout=30)
            check.eq(rc, EX_CONFIG, f"--check-config refuses {tls!r}")
            check(conf + want in err, f"with {want!r} (got {err.strip()[-300:]!r})")
        write(f"ssl_mode = verify_identity\nssl_ca = {ca}")
        rc, out, err = h.run_daemon(conf, "--check-config", timeout=30)
        check.eq(rc, 0, "--check-config accepts verify_identity with a CA")
        check("ssl_mode = verify_identity" in out and f"ssl_ca = {ca}" in out,
              "and prints the TLS keys")
    finally:
        try:
            if db:
                db.drop()
        except Exception:
            pass
        server("stop", dbdir)
    check.done()


if __name__ == "__main__":
    main()
