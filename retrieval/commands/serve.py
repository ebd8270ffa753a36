"""`slidesearch serve INDEX`: the HTTP API and web page over one index (read-only; 127.0.0.1 unless told)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from indexer.settings import SERVER_TOKEN, read
from retrieval.cli_app import DICOMWEB_TOKEN_OPTION, app, fail, guarded
from retrieval.serve import (BODY_TIMEOUT_S, DEFAULT_HOST, DEFAULT_PORT, HEADER_TIMEOUT_S, one_thread_per_request,
                             return_freed_memory, url)
from retrieval.serve.budget import BudgetConfig

DEFAULTS = BudgetConfig()


@app.command("serve")
@guarded
def serve_command(
    index: Path = typer.Argument(..., help="Index directory."),
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to bind; anything but loopback needs a token (--token-file)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="TCP port."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (for embedding queries)."),
    cors_origin: Optional[List[str]] = typer.Option(None, "--cors-origin", help="Let pages from this origin call the API (repeatable; default: CORS off)."),
    workers: Optional[int] = typer.Option(None, "--concurrency", help="Expensive requests (searches, tiles, heatmaps, uploads) running at once (default: CPU count)."),
    memory_mb: int = typer.Option(DEFAULTS.memory_mb, "--memory-budget", help="MiB of working memory those requests may hold at once (decoded uploads, heatmaps); a request that does not fit waits."),
    queue: int = typer.Option(DEFAULTS.queue, "--queue", help="Requests that may wait for the budget; more get 503 with Retry-After."),
    queue_wait: float = typer.Option(DEFAULTS.wait_s, "--queue-wait", help="Seconds a request waits for the budget at most, then 503."),
    allowed_host: Optional[List[str]] = typer.Option(None, "--allowed-host", help="A Host name answered besides localhost, 127.0.0.1 and [::1] (repeatable)."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File whose first line is the bearer token every /api/ route but /api/health needs (or set SLIDESEARCH_TOKEN)."),
    audit_log: Optional[Path] = typer.Option(None, "--audit-log", help="Append one JSON line per API request here (time, route, query kind, status, duration)."),
    header_timeout: float = typer.Option(HEADER_TIMEOUT_S, "--header-timeout", help="Seconds a request line and its headers may take to arrive."),
    body_timeout: float = typer.Option(BODY_TIMEOUT_S, "--body-timeout", help="Seconds a request body may take to arrive."),
    dicomweb_token_file: Optional[Path] = DICOMWEB_TOKEN_OPTION,
) -> None:
    """Serve INDEX over HTTP: the API (OpenAPI at /docs) and the search page at /; follows new versions live."""
    one_thread_per_request()
    return_freed_memory()
    import uvicorn

    from indexer.slides.dicomweb import use_token_file
    from retrieval.serve.access import read_token, refuse_exposed_without_token
    from retrieval.serve.app import create_app
    from retrieval.serve.protocol import server_config

    use_token_file(dicomweb_token_file)
    if not 0 < port < 65536:
        fail(f"--port {port}: expected 1-65535")
    if not (header_timeout > 0 and body_timeout > 0):
        fail("--header-timeout and --body-timeout: expected seconds > 0")
    token = read_token(token_file, read(SERVER_TOKEN))
    refuse_exposed_without_token(host, token)
    budget = BudgetConfig(slots=workers, memory_mb=memory_mb, queue=queue, wait_s=queue_wait)
    hosts = [*(allowed_host or ()), *([host] if host not in ("0.0.0.0", "::") else [])]
    application = create_app(index, device=device, cors_origins=cors_origin or (), budget=budget, allowed_hosts=hosts,
                             token=token, audit_log=audit_log)
    page = url(host, port)
    typer.echo(f"serving {index} (version {application.state.service.live.version}) at {page}  "
               f"(API docs: {page}docs; {'token required' if token else 'no token'}; Ctrl-C stops)", err=True)
    config = server_config(application, host, port, header_timeout=header_timeout, body_timeout=body_timeout)
    uvicorn.Server(config).run()
