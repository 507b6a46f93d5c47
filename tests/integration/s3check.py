"""An S3 stand-in for the export tests: s3rver (npm) behind a proxy that checks every request's
AWS Signature Version 4 on its own before forwarding it.

s3rver is installed by the test into a cache directory (npm install; the test SKIPs when that
fails). The proxy recomputes each signature from the request as received -- canonical URI
(each path segment URI-encoded as S3 does), canonical query, the signed headers, the payload
hash from x-amz-content-sha256, which must also be the body's real sha256 -- and the body's MD5
against Content-MD5. A request that fails any check is answered 403 and counted, never
forwarded. The proxy can also stall uploads (to kill the daemon in the middle of one).

Python standard library only. References: AWS "Signature Calculations for the Authorization
Header: Transferring Payload in a Single Chunk (AWS Signature Version 4)" and "Create a
canonical request for Signature Version 4".
"""
import base64
import datetime
import hashlib
import hmac
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse

import harness  # tests/integration is on sys.path: the tests put it there

ACCESS_KEY = "S3RVER"  # s3rver's built-in credentials: it checks signatures too
SECRET_KEY = "S3RVER"
REGION = "us-east-1"


def install_s3rver(cache):
    """The s3rver binary, installed with npm into `cache`; None with a reason when it cannot
    be."""
    binary = os.path.join(cache, "node_modules", ".bin", "s3rver")
    if os.path.exists(binary):
        return binary, None
    if not shutil.which("npm") or not shutil.which("node"):
        return None, "node/npm not installed"
    os.makedirs(cache, exist_ok=True)
    p = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", cache,
                        "s3rver@3"], capture_output=True, text=True, timeout=600)
    if p.returncode != 0 or not os.path.exists(binary):
        return None, "npm install s3rver failed: " + (p.stderr.strip()[-300:] or "no binary")
    return binary, None


def _uri_encode(s, keep_slash):
    safe = "-_.~" + ("/" if keep_slash else "")
    return urllib.parse.quote(s, safe=safe)


def canonical_uri(path):
    # S3 decodes the path it receives, then encodes each segment once.
    return "/".join(_uri_encode(urllib.parse.unquote(seg), False) for seg in path.split("/"))


def canonical_query(query):
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return "&".join(f"{_uri_encode(k, False)}={_uri_encode(v, False)}" for k, v in sorted(pairs))


def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret, date, region, service):
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def signature(method, path, query, headers, signed, payload_hash, amz_date, scope, secret):
    """headers: lower-case name -> value as received."""
    canon_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    creq = "\n".join([method, canonical_uri(path), canonical_query(query), canon_headers,
                      ";".join(signed), payload_hash])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    date, region, service, _ = scope.split("/")
    return hmac.new(signing_key(secret, date, region, service), sts.encode(),
                    hashlib.sha256).hexdigest()


def verify(method, target, headers, body):
    """None when the request is correctly signed, else why not."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "no SigV4 Authorization header"
    parts = {}
    for item in auth[len("AWS4-HMAC-SHA256 "):].split(","):
        k, _, v = item.strip().partition("=")
        parts[k] = v
    try:
        ak, date, region, service, term = parts["Credential"].split("/")
        signed = parts["SignedHeaders"].split(";")
        sig = parts["Signature"]
    except (KeyError, ValueError):
        return "malformed Authorization: " + auth
    if ak != ACCESS_KEY or region != REGION or service != "s3" or term != "aws4_request":
        return f"unexpected credential scope {parts['Credential']}"
    for need in ("host", "x-amz-date", "x-amz-content-sha256"):
        if need not in signed:
            return f"{need} is not signed (SignedHeaders={parts['SignedHeaders']})"
    payload_hash = headers.get("x-amz-content-sha256", "")
    if payload_hash != hashlib.sha256(body).hexdigest():
        return "x-amz-content-sha256 is not the body's sha256"
    if "content-md5" in headers and headers["content-md5"] != base64.b64encode(
            hashlib.md5(body).digest()).decode():
        return "Content-MD5 is not the body's md5"
    amz_date = headers.get("x-amz-date", "")
    if not amz_date.startswith(date):
        return "x-amz-date and the credential's date differ"
    path, _, query = target.partition("?")
    want = signature(method, path, query, headers, signed, payload_hash, amz_date,
                     f"{date}/{region}/{service}/aws4_request", SECRET_KEY)
    if not hmac.compare_digest(want, sig):
        return "signature mismatch"
    return None


class Proxy:
    """The verifying proxy on a loopback port, forwarding to s3rver at `upstream` (port)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.verified = 0
        self.failures = []
        self.puts = 0
        self.deletes = 0
        self.arrivals = []  # time.monotonic() of each request as it arrived
        self.stall_s = 0.0
        self.fail_next = 0  # answer this many PUTs 503 (retry path)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _handle(self):
                n = int(self.headers.get("content-length") or 0)
                if self.headers.get("expect", "").lower() == "100-continue":
                    pass  # BaseHTTPRequestHandler answers 100 itself (HTTP/1.1)
                body = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                why = verify(self.command, self.path, headers, body)
                with proxy.lock:
                    proxy.arrivals.append(time.monotonic())
                    if why:
                        proxy.failures.append(f"{self.command} {self.path}: {why}")
                    else:
                        proxy.verified += 1
                    if self.command == "PUT":
                        proxy.puts += 1
                    if self.command == "DELETE":
                        proxy.deletes += 1
                    fail = self.command == "PUT" and proxy.fail_next > 0 and not why
                    if fail:
                        proxy.fail_next -= 1
                if why or fail:
                    msg = (why or "injected 503").encode()
                    self.send_response(403 if why else 503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if self.command == "PUT" and proxy.stall_s:
                    time.sleep(proxy.stall_s)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
                fwd = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                conn.request(self.command, self.path, body=body, headers=fwd)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _safe(self):
                try:
                    self._handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the daemon was killed in the middle of a request

            do_PUT = do_GET = do_DELETE = do_HEAD = do_POST = _safe

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def sign_headers(host, method, path, body, encode_path=True):
    """The headers a correct client sends (encode_path False: the path signed as given, the
    mistake the verifier must catch when the key holds '=')."""
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload}
    signed = sorted(headers)
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    p, _, q = path.partition("?")
    canon = canonical_uri if encode_path else (lambda x: x)
    canon_headers = "".join(f"{h}:{headers[h]}\n" for h in signed)
    creq = "\n".join([method, canon(p), canonical_query(q), canon_headers, ";".join(signed),
                      payload])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    sig = hmac.new(signing_key(SECRET_KEY, amz_date[:8], REGION, "s3"), sts.encode(),
                   hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
                                f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    return headers


def self_test():
    """The verifier accepts a correct request and refuses each kind of wrong one; returns the
    list of checks that did not behave."""
    bad = []
    path = "/b/lake/prices/date%3D2026-11-24/part-00000.csv.gz"
    raw = "/b/lake/prices/date=2026-11-24/part-00000.csv.gz"
    body = b"some bytes"
    ok = sign_headers("127.0.0.1:1", "PUT", path, body)
    if verify("PUT", path, ok, body) is not None:
        bad.append("a correct request is refused: " + str(verify("PUT", path, ok, body)))
    if verify("PUT", path, ok, body + b"x") is None:
        bad.append("a changed body passes")
    if verify("DELETE", path, ok, body) is None:
        bad.append("another method passes")
    wrong = sign_headers("127.0.0.1:1", "PUT", raw, body, encode_path=False)
    if verify("PUT", raw, wrong, body) is None:
        bad.append("a path signed without encoding '=' passes")
    md5 = dict(ok, **{"content-md5": base64.b64encode(hashlib.md5(b"other").digest()).decode()})
    if verify("PUT", path, md5, body) is None:
        bad.append("a wrong Content-MD5 passes")
    return bad


def signed_request(port, method, path, body=b""):
    """A request signed here (the same algorithm the proxy checks), for reading objects back."""
    headers = sign_headers(f"127.0.0.1:{port}", method, path, body)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


class S3:
    """s3rver with one bucket, and the verifying proxy in front of it."""

    def __init__(self, binary, workdir, bucket):
        self.bucket = bucket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.s3rver_port = s.getsockname()[1]
        s.close()
        data = os.path.join(workdir, "s3rver-data")
        os.makedirs(data, exist_ok=True)
        self.log = open(os.path.join(workdir, "s3rver.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "-d", data, "-a", "127.0.0.1", "-p", str(self.s3rver_port),
             "--no-vhost-buckets", "--configure-bucket", bucket],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.s3rver_port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("s3rver did not start (see s3rver.log)")
                time.sleep(0.1)
        self.proxy = Proxy(self.s3rver_port)
        self.endpoint = f"http://127.0.0.1:{self.proxy.port}"

    def get(self, key):
        """(status, bytes) of an object, through the proxy, signed."""
        return signed_request(self.proxy.port, "GET",
                              "/" + self.bucket + "/" + urllib.parse.quote(key, safe="/-_.~"))

    def close(self):
        self.proxy.close()
        harness.stop_process(self.proc)
        self.log.close()
