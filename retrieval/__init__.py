"""slidesearch retrieval: query an index directory (text, slide and patch queries), metrics, CLI."""

import indexer  # noqa: F401,E402  (applies indexer/settings.py's defaults before numpy, FAISS or torch load)
