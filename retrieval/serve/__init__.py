"""`slidesearch serve`: a read-only HTTP API (FastAPI on uvicorn) and a web page over one live index."""
