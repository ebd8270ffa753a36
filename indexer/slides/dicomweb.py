"""DICOMweb slides: one WSI series of a DICOMweb server (Orthanc, dcm4chee, cloud archives), its frames read over HTTP.

A slide is named by a URL ``dicomweb+http(s)://HOST[:PORT]/ROOT/studies/UID/series/UID``; ``ROOT`` is the
server's DICOMweb root (``/dicom-web`` on Orthanc). That URL is what an index stores as the slide's path: it
never holds credentials. A bearer token comes from the file named by ``SLIDESEARCH_DICOMWEB_TOKEN_FILE``
(``--dicomweb-token-file`` sets it), read on every open, so reader processes and ``serve`` find it too.
Frames are read through wsidicom's ``WsiDicomWebClient``; nothing is copied to disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from indexer.errors import SlideError, UserError
from indexer.settings import DICOMWEB_TOKEN_FILE, read, write
from indexer.slides.dicom import WsiDicomSlide, one_line

SCHEMES = ("dicomweb+http", "dicomweb+https")
TOKEN_ENV = DICOMWEB_TOKEN_FILE
TIMEOUT = (10.0, 120.0)  # seconds to connect, and to wait for each answer
RETRIES = 3  # on a refused connection, 502, 503 and 504 (with backoff)
FRAME_CACHE = (32 << 20, 16 << 20)  # bytes of encoded and decoded frames each open slide keeps (wsidicom's: 100 MB each)
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_dicomweb(source: Any) -> bool:
    """Whether ``source`` is a ``dicomweb+http(s)://`` URL (a str, never a Path).

    >>> is_dicomweb("dicomweb+https://pacs/dicom-web"), is_dicomweb("slides/a.svs")
    (True, False)
    """
    return isinstance(source, str) and source.split("://", 1)[0].lower() in SCHEMES and "://" in source


@dataclass(frozen=True)
class DicomWebAddress:
    """A DICOMweb root (``http(s)://host:port/path``), optionally narrowed to a study or a series."""

    root: str
    study: str | None = None
    series: str | None = None

    @classmethod
    def parse(cls, url: str) -> "DicomWebAddress":
        """Read ``dicomweb+http(s)://HOST[:PORT]/PATH[/studies/UID[/series/UID]]``; a UserError line if malformed.

        >>> DicomWebAddress.parse("dicomweb+http://127.0.0.1:8042/dicom-web/studies/1.2/series/1.2.3/")
        DicomWebAddress(root='http://127.0.0.1:8042/dicom-web', study='1.2', series='1.2.3')
        """
        if not is_dicomweb(url):
            raise UserError(f"{url}: not a DICOMweb URL (expected dicomweb+http://HOST:PORT/PATH or dicomweb+https://…)")
        parts = urlsplit(url.split("+", 1)[1])
        if parts.username is not None or parts.password is not None:
            raise UserError(f"{_redacted(url)}: credentials do not belong in the URL (it is stored in the index); "
                            "give a bearer token with --dicomweb-token-file")
        if not parts.hostname or parts.query or parts.fragment:
            raise UserError(f"{url}: expected dicomweb+http(s)://HOST[:PORT]/PATH[/studies/UID[/series/UID]], "
                            "without a query or fragment")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise UserError(f"{url}: the port is not a number") from None
        segments = [s for s in parts.path.split("/") if s]
        study = series = None
        if len(segments) >= 4 and segments[-4] == "studies" and segments[-2] == "series":
            study, series, segments = segments[-3], segments[-1], segments[:-4]
        elif len(segments) >= 2 and segments[-2] == "studies":
            study, segments = segments[-1], segments[:-2]
        for uid in (study, series):
            if uid is not None and not _UID.match(uid):
                raise UserError(f"{url}: {uid!r} is not a DICOM UID (digits and dots)")
        root = f"{parts.scheme}://{parts.netloc}" + "".join(f"/{s}" for s in segments)
        return cls(root, study, series)

    def url(self) -> str:
        """The ``dicomweb+…`` URL of this address (what the index stores)."""
        tail = f"/studies/{self.study}" if self.study else ""
        tail += f"/series/{self.series}" if self.series else ""
        return f"dicomweb+{self.root}{tail}"

    def __str__(self) -> str:
        return self.url()


def use_token_file(path: str | Path | None) -> None:
    """Check a bearer-token file and make every later DICOMweb request (here and in child processes) send it."""
    if path is None:
        return
    path = Path(path).expanduser().resolve()
    read_token(path)
    write(TOKEN_ENV, str(path))


def read_token(path: str | Path | None = None) -> str | None:
    """The bearer token of ``path`` (default: the file ``SLIDESEARCH_DICOMWEB_TOKEN_FILE`` names), or None."""
    path = path if path is not None else read(TOKEN_ENV) or None
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--dicomweb-token-file {path}: cannot be read ({exc.__class__.__name__})") from None
    token = text[len("bearer "):].strip() if text.lower().startswith("bearer ") else text
    if not token or any(c.isspace() for c in token):
        raise UserError(f"--dicomweb-token-file {path}: expected one bearer token on one line")
    return token


def open_session():
    """A requests session for DICOMweb: the bearer token (if any), timeouts and retries on transient failures."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class _Adapter(HTTPAdapter):
        def send(self, request, **kwargs):
            kwargs["timeout"] = kwargs.get("timeout") or TIMEOUT
            return super().send(request, **kwargs)

    session = requests.Session()
    retry = Retry(total=RETRIES, connect=RETRIES, read=0, status=RETRIES, backoff_factor=0.2,
                  status_forcelist=(502, 503, 504), allowed_methods=("GET",), raise_on_status=False)
    for prefix in ("http://", "https://"):
        session.mount(prefix, _Adapter(max_retries=retry))
    token = read_token()
    if token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def dicomweb_client(address: DicomWebAddress):
    """A ``dicomweb_client.DICOMwebClient`` on ``address``'s root, with :func:`open_session`."""
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(address.root, session=open_session())


def http_problem(exc: BaseException) -> str | None:
    """Why a DICOMweb request failed, in words (unreachable, 401, 403, another status), or None if it is no
    request failure."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code, reason = exc.response.status_code, exc.response.reason or ""
        if code == 401 and read_token() is not None:
            return f"the server refused the token (HTTP 401 {reason}); check --dicomweb-token-file"
        if code == 401:
            return f"the server asks for credentials (HTTP 401 {reason}); give a bearer token with --dicomweb-token-file"
        if code == 403:
            return f"access denied (HTTP 403 {reason}); the token does not grant access to it"
        return f"HTTP {code} {reason}{_server_message(exc.response)}"
    if isinstance(exc, requests.Timeout):
        return f"the DICOMweb server did not answer in time ({TIMEOUT[1]:g} s)"
    if isinstance(exc, requests.ConnectionError):
        errno = re.search(r"\[Errno -?\d+\] ([^'\"\)]+)", str(exc))
        return f"cannot reach the DICOMweb server ({errno.group(1).strip() if errno else one_line(exc)})"
    if isinstance(exc, requests.RequestException):
        return f"the DICOMweb request failed ({one_line(exc)})"
    return None


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of a failed request, else None."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _server_message(response) -> str:
    """``: <message>`` when the server explained itself in a short JSON ``Message``/``message``/``error``."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = next((body[k] for k in ("Message", "message", "error") if isinstance(body, dict) and k in body), None)
    return f": {str(message).splitlines()[0][:120]}" if message else ""


class DicomWebSlide(WsiDicomSlide):
    """One WSI series on a DICOMweb server, opened with ``WsiDicom.open_web`` (frames fetched on demand)."""

    vendor = "dicomweb"

    def __init__(self, url: str):
        address = DicomWebAddress.parse(url)
        if address.series is None:
            raise SlideError(f"{url}: names no series; a DICOMweb slide is …/studies/UID/series/UID")
        self.url = address.url()
        from wsidicom import Settings, WsiDicom, WsiDicomWebClient

        client = WsiDicomWebClient(dicomweb_client(address))
        settings = Settings(encoded_frame_cache_size=FRAME_CACHE[0], decoded_frame_cache_size=FRAME_CACHE[1])
        try:
            wsi = WsiDicom.open_web(client, address.study, address.series, settings=settings)
        except Exception as exc:  # noqa: BLE001 - HTTP failures, and wsidicom's errors for a foreign series
            why = http_problem(exc) or f"not a readable whole-slide image series ({one_line(exc)})"
            raise SlideError(f"{self.url}: {why}") from None
        super().__init__(wsi, self.url)

    def read_region(self, x: int, y: int, level: int, w: int, h: int):
        """As :meth:`WsiDicomSlide.read_region`; a frame the server cannot give fails as one line."""
        try:
            return super().read_region(x, y, level, w, h)
        except Exception as exc:  # noqa: BLE001
            why = http_problem(exc)
            if why is None:
                raise
            where = f"{self.url}: a frame of level {level} at ({x}, {y})"
            if status_code(exc) in (404, 410):
                raise SlideError(f"{where} is missing on the server ({why})") from None
            raise SlideError(f"{where} cannot be read: {why}") from None


def _redacted(url: str) -> str:
    """``url`` without its user:password part."""
    return re.sub(r"://[^/@]*@", "://", url)
