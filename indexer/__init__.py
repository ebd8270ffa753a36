"""slidesearch indexer: slides → tissue → tiles → embeddings → slide vectors → index directory."""

from indexer.settings import apply_defaults

apply_defaults()  # before numpy, FAISS or torch load, for the CLI, the Python API, the server and Ray actors
