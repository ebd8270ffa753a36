"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on a free 127.0.0.1 port, with its own temporary
storage, for the DICOMweb tests; and a small bearer-token proxy in front of it that can also lose frames."""

from __future__ import annotations

import glob
import http.client
import json
import re
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from serving import free_port

PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


def orthanc_binary() -> str | None:
    """The Orthanc executable (Debian installs it in /usr/sbin), or None."""
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)


def dicomweb_plugin() -> str | None:
    """The DICOMweb plugin's shared library, as the ``orthanc-dicomweb`` package installed it, or None."""
    try:
        listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    found = [line for line in listed.splitlines() if re.search(r"libOrthancDicomWeb\.so", line) and Path(line).is_file()]
    found += [p for pattern in PLUGIN_GLOBS for p in glob.glob(pattern)]
    return found[0] if found else None


class Orthanc:
    """One running Orthanc: its REST root (``url``), DICOMweb root (``dicomweb``) and a ``dicomweb+http`` URL."""

    def __init__(self, port: int, users: dict[str, str] | None):
        self.port, self.users = port, users
        self.url = f"http://127.0.0.1:{port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.source = f"dicomweb+{self.dicomweb}"

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        import base64

        headers = {"Content-Type": "application/dicom"} if body is not None else {}
        if self.users:
            user, password = next(iter(self.users.items()))
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def upload(self, *files: Path) -> None:
        """Store DICOM files (every file of a folder given)."""
        for item in files:
            for file in sorted(Path(item).iterdir()) if Path(item).is_dir() else [Path(item)]:
                status, body = self._request("POST", "/instances", file.read_bytes())
                if status != 200:
                    raise RuntimeError(f"Orthanc refused {file}: {status} {body[:200]!r}")

    def delete_instance(self, sop_instance_uid: str) -> None:
        """Delete one stored instance, found by its SOPInstanceUID."""
        status, body = self._request("POST", "/tools/lookup", sop_instance_uid.encode())
        ids = [item["ID"] for item in json.loads(body) if item["Type"] == "Instance"]
        if status != 200 or not ids:
            raise RuntimeError(f"no instance {sop_instance_uid} in Orthanc")
        self._request("DELETE", f"/instances/{ids[0]}")


@contextmanager
def running_orthanc(workdir: Path, users: dict[str, str] | None = None, timeout_s: float = 30.0) -> Iterator[Orthanc]:
    """Start Orthanc (DICOMweb plugin on, DICOM port off, storage under ``workdir``) until the block ends.

    ``users`` turns on Orthanc's HTTP Basic authentication with those user: password pairs.
    """
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None or plugin is None:
        raise RuntimeError("Orthanc or its DICOMweb plugin is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "slidesearch-test", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
        "Plugins": [plugin], "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "HttpCompressionEnabled": False, "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "ConcurrentJobs": 1, "HttpThreadsCount": 8, "SaveJobs": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")
    process = subprocess.Popen([binary, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(port, users)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if server._request("GET", "/system")[0] in (200, 401):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start: {(workdir / 'orthanc.log').read_text()[-500:]}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class Proxy:
    """Forwards GETs to an upstream server when they carry ``Authorization: Bearer <token>`` (401 without one, 403
    with another); answers 404 for frames listed in ``missing`` (``…/instances/UID/frames/N`` paths); counts
    the requests it forwarded."""

    def __init__(self, upstream_port: int, token: str):
        self.upstream_port, self.token = upstream_port, token
        self.missing: set[tuple[str, int]] = set()  # (SOPInstanceUID, frame number)
        self.forwarded = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Bearer "):
                    return self._answer(401, b'{"error": "bearer token required"}')
                if auth[len("Bearer "):] != proxy.token:
                    return self._answer(403, b'{"error": "token not allowed"}')
                frames = re.search(r"/instances/([0-9.]+)/frames/([0-9,]+)", self.path)
                if frames and any((frames.group(1), int(n)) in proxy.missing for n in frames.group(2).split(",")):
                    return self._answer(404, b'{"error": "frame not found"}')
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    upstream.request("GET", self.path, headers={"Accept": self.headers.get("Accept", "*/*")})
                    response = upstream.getresponse()
                    body = response.read()
                finally:
                    upstream.close()
                proxy.forwarded += 1
                self._answer(response.status, body, response.getheader("Content-Type", "application/octet-stream"))

        return Handler


@contextmanager
def running_proxy(upstream: Orthanc, token: str) -> Iterator[Proxy]:
    """Run a :class:`Proxy` in front of ``upstream`` until the block ends."""
    proxy = Proxy(upstream.port, token)
    server = ThreadingHTTPServer(("127.0.0.1", proxy.port), proxy.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
