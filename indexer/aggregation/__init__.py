"""Prototypes and aggregation: knowledge banks, prototype embeddings, and patch features pooled into slide vectors."""
