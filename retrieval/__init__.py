"""slidesearch retrieval: query an index directory (text, slide and patch queries), metrics, CLI."""
