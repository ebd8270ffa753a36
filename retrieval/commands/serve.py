"""`slidesearch serve INDEX`: the HTTP API and web page over one index (read-only; 127.0.0.1 unless told)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from retrieval.cli_app import DICOMWEB_TOKEN_OPTION, app, fail, guarded
from retrieval.serve import DEFAULT_HOST, DEFAULT_PORT, one_thread_per_request, url

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command("serve")
@guarded
def serve_command(
    index: Path = typer.Argument(..., help="Index directory."),
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to bind; anything but loopback exposes the index to the network."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="TCP port."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (for embedding queries)."),
    cors_origin: Optional[List[str]] = typer.Option(None, "--cors-origin", help="Let pages from this origin call the API (repeatable; default: CORS off)."),
    workers: Optional[int] = typer.Option(None, "--concurrency", help="Expensive requests (searches, tiles, heatmaps) running at once (default: CPU count)."),
    dicomweb_token_file: Optional[Path] = DICOMWEB_TOKEN_OPTION,
) -> None:
    """Serve INDEX over HTTP: the API (OpenAPI at /docs) and the search page at /; follows new versions live."""
    one_thread_per_request()
    import uvicorn

    from indexer.slides.dicomweb import use_token_file
    from retrieval.serve.app import create_app

    use_token_file(dicomweb_token_file)
    if not 0 < port < 65536:
        fail(f"--port {port}: expected 1-65535")
    if host not in LOOPBACK:
        typer.echo(f"WARNING: binding {host}: anyone who can reach this address can search the index and view its slides "
                   "(no authentication); use a reverse proxy with access control for shared use", err=True)
    application = create_app(index, device=device, cors_origins=cors_origin or (), max_concurrent=workers)
    page = url(host, port)
    typer.echo(f"serving {index} (version {application.state.service.live.version}) at {page}  "
               f"(API docs: {page}docs; Ctrl-C stops)", err=True)
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)  # INFO lines, unseen at warning
