"""`slidesearch serve`: a read-only HTTP API (FastAPI on uvicorn) and a web page over one live index."""

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
HEADER_TIMEOUT_S = 10.0  # a request line and headers must arrive within this (retrieval/serve/protocol.py)
BODY_TIMEOUT_S = 60.0  # a request body must arrive within this


def url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The page's address for a bind address and port.

    >>> url(), url("::1", 9000)
    ('http://127.0.0.1:8000/', 'http://[::1]:9000/')
    """
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def one_thread_per_request() -> None:
    """Run FAISS and torch single-threaded in this process unless ``OMP_NUM_THREADS`` says otherwise.

    A server's parallelism is its concurrent requests; an OpenMP team per request thread only adds wake-ups
    (measured: slide queries 1.7 ms instead of 2.3 ms p50 over HTTP, filtered ones 6.4 instead of 7.8). It must
    run before numpy, FAISS or torch is imported: OpenBLAS and the OpenMP runtime read the variable once, when
    they load (numpy loaded first keeps a BLAS thread per core, spinning after each re-rank's matrix product).
    """
    from indexer.settings import apply_server_defaults

    apply_server_defaults()


def return_freed_memory() -> None:
    """Have glibc map allocations of 1 MiB and more on their own (``mallopt(M_MMAP_THRESHOLD)``), so the pixels of a
    decoded upload go back to the system when freed.

    By default glibc raises that threshold after the first large free, and later large buffers come from its
    per-thread arenas, which keep them: measured here, one 33.5-MP PNG upload left the server 256 MiB larger for
    good, and an upload flood grew it by gigabytes. A no-op where libc is not glibc.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return
