"""slidesearch indexer: slides → tissue → tiles → embeddings → slide vectors → index directory."""
