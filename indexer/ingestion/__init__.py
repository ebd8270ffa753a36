"""Ingest: discover slides, prepare and read them in reader processes, encode, and commit what finished."""
