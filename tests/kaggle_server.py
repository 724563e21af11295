"""A fake Kaggle on 127.0.0.1 for tests, and the environment that points the unchanged `kaggle` package at it.

The package is run in a subprocess with KAGGLE_API_ENVIRONMENT=LOCALHOST (so it calls http://localhost/api/v1/...)
and HTTP_PROXY set to this server, which therefore receives absolute URLs in the request line. It implements
the RPCs the pipeline uses (JSON POSTs to /api/v1/<Service>/<Method>), the blob download that
DownloadDataFiles redirects to, and the upload PUT. A sitecustomize.py on the subprocess's PYTHONPATH makes
any connection (or DNS lookup) that is not loopback fail and logs it, so a test can prove nothing left the machine.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
USERNAME = "pipeline-tester"
KEY = "f4k3-k3y-0123456789abcdef"  # the key the server accepts
COMPETITION_SERVICE = "competitions.CompetitionApiService"

GUARD_SOURCE = '''
"""Test guard: refuse (and log) any socket connection or name lookup that is not loopback."""
import ipaddress, os, socket

_LOG = os.environ.get("NETGUARD_LOG")


def _is_loopback(host):
    if isinstance(host, bytes):
        host = host.decode()
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what):
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(what + "\\n")
    raise ConnectionRefusedError("netguard: refused non-loopback " + what)


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        _refuse("connect %r" % (address,))
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        _refuse("connect %r" % (address,))
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if not _is_loopback(host):
        _refuse("lookup %r" % (host,))
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
socket.gethostbyname = lambda host: getaddrinfo(host, None)[0][4][0]
'''


@dataclass
class Submission:
    ref: int
    description: str
    file_name: str = "submission.csv"
    public_score: str = "0.91"
    private_score: str = "0.87"
    pending_polls: int = 0  # listings that still show it PENDING
    error: str | None = None  # set: it ends as ERROR with this description


@dataclass
class FakeKaggle:
    """Scripted behaviour: `archive` served for `slug`; new submissions stay PENDING for `pending_polls`
    listings, then COMPLETE (or ERROR with `score_error`); `fail_upload` makes the upload PUT answer 500;
    `delays` {"ListSubmissions": 30} makes an RPC answer only after that many seconds (a hanging server)."""

    slug: str
    archive: bytes = b""
    username: str = USERNAME
    key: str = KEY
    token: str = "f4k3-access-token-fedcba9876543210"
    pending_polls: int = 1
    fail_upload: bool = False
    score_error: str | None = None
    delays: dict[str, float] = field(default_factory=dict)
    first_ref: int = 50_000
    submissions: list[Submission] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)  # (method, request target as sent)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "FakeKaggle":
        fake = self

        class Handler(_Handler):
            kaggle = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()  # ends the sleep of a delayed answer
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_submission(self, description: str, **fields) -> Submission:
        with self._lock:
            submission = Submission(ref=self.first_ref + len(self.submissions), description=description, **fields)
            self.submissions.append(submission)
        return submission

    def paths(self) -> list[str]:
        return [urlsplit(target).path for _, target in self.log]

    # ---- RPCs ------------------------------------------------------------------------------------
    def rpc(self, method: str, body: dict) -> tuple[int, dict, dict]:
        """(status, JSON body, extra headers) for one API call."""
        delay = self.delays.get(method.rsplit("/", 1)[-1], 0)
        if delay:
            self._stop.wait(delay)
        if method == "security.OAuthService/IntrospectToken":
            active = body.get("token") == self.token
            return 200, {"active": active, "username": self.username if active else ""}, {}
        if method == f"{COMPETITION_SERVICE}/DownloadDataFiles":
            if body.get("competitionName") != self.slug:
                return 404, {"code": 404, "message": "Competition not found"}, {}
            return 302, {}, {"Location": f"http://localhost/blobs/{self.slug}.zip"}
        if method == f"{COMPETITION_SERVICE}/StartSubmissionUpload":
            token = f"blob-{len(self.log)}"
            return 200, {"token": token, "createUrl": f"http://localhost/uploads/{token}"}, {}
        if method == f"{COMPETITION_SERVICE}/CreateSubmission":
            if body.get("blobFileTokens") not in self.uploads:
                return 400, {"code": 400, "message": "unknown blob token"}, {}
            submission = self.add_submission(body.get("submissionDescription", ""), pending_polls=self.pending_polls,
                                             error=self.score_error)
            return 200, {"message": f"Successfully submitted to {body.get('competitionName')}", "ref": submission.ref}, {}
        if method == f"{COMPETITION_SERVICE}/ListSubmissions":
            return 200, {"submissions": self._listing(int(body.get("page", 1)), int(body.get("pageSize", 20)))}, {}
        return 404, {"code": 404, "message": f"no such method {method}"}, {}

    def _listing(self, page: int, page_size: int) -> list[dict]:
        with self._lock:
            newest_first = self.submissions[::-1][(page - 1) * page_size: page * page_size]
            rows = []
            for s in newest_first:
                row = {"ref": s.ref, "date": "2026-01-02T03:04:05.000Z", "description": s.description,
                       "fileName": s.file_name, "status": "PENDING"}
                if s.pending_polls > 0:
                    s.pending_polls -= 1
                elif s.error:
                    row.update(status="ERROR", errorDescription=s.error)
                else:
                    row.update(status="COMPLETE", publicScore=s.public_score, privateScore=s.private_score)
                rows.append(row)
        return rows

    def authorized(self, header: str | None) -> bool:
        basic = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        return header in (f"Basic {basic}", f"Bearer {self.token}")


class _Handler(BaseHTTPRequestHandler):
    kaggle: FakeKaggle

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        fake = self.kaggle
        fake.log.append((self.command, self.path))
        path = urlsplit(self.path).path  # a proxy request carries the absolute URL
        body = self._body()
        if path.startswith("/api/v1/") and self.command == "POST":
            if not fake.authorized(self.headers.get("Authorization")):  # worst case: the error quotes what it got
                message = f"Unauthenticated: rejected {_decode_auth(self.headers.get('Authorization'))}"
                return self._send(401, json.dumps({"code": 401, "message": message}).encode())
            status, answer, headers = fake.rpc(path[len("/api/v1/"):], json.loads(body or b"{}"))
            return self._send(status, json.dumps(answer).encode(), headers=headers)
        if path == f"/blobs/{fake.slug}.zip" and self.command == "GET":
            return self._send(200, fake.archive, "application/zip")
        if path.startswith("/uploads/") and self.command == "PUT":
            if fake.fail_upload:
                return self._send(500, b"upload storage unavailable", "text/plain")
            fake.uploads[path[len("/uploads/"):]] = body
            return self._send(200, b"{}")
        self._send(404, json.dumps({"code": 404, "message": f"nothing at {self.command} {path}"}).encode())

    do_GET = do_POST = do_PUT = do_HEAD = _route


def _decode_auth(header: str | None) -> str:
    if header and header.startswith("Basic "):
        return base64.b64decode(header[len("Basic "):]).decode(errors="replace")
    return header or "no credentials"


def client_env(home: Path, proxy_url: str, guard_log: Path) -> dict:
    """Environment for a subprocess that runs the pipeline against the fake server: no real credentials,
    HOME and the Kaggle config in `home`, every request through the proxy, the network guard installed."""
    guard_dir = home.parent / "netguard"
    guard_dir.mkdir(parents=True, exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(GUARD_SOURCE)
    drop = ("KAGGLE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "VERBOSE", "PYTHONPATH", "XDG_")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / ".kaggle"), "XDG_CONFIG_HOME": str(home / ".config"),
        "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": proxy_url, "HTTPS_PROXY": proxy_url,
        "http_proxy": proxy_url, "https_proxy": proxy_url, "NETGUARD_LOG": str(guard_log),
        "PYTHONPATH": os.pathsep.join([str(guard_dir), str(REPO_ROOT)]), "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    return env


def write_kaggle_json(home: Path, username: str = USERNAME, key: str = KEY, mode: int = 0o600) -> Path:
    path = home / ".kaggle" / "kaggle.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"username": username, "key": key}))
    path.chmod(mode)
    return path


PYTHON = sys.executable
