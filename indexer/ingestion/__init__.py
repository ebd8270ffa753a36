"""Ingest: discover slides, prepare and read them in reader processes, encode, and commit what finished.

- ``config``: what a run is asked (IndexConfig) and reports (IndexReport);
- ``discovery``: files and folders expanded into slide inputs;
- ``run``: ``run_index``, which composes the stages; ``commit``: which slides to encode and when to commit;
- ``encode``, ``embedding``, ``stream``: one slide, one grid, and a run's slides through one reader pool;
- ``readers``, ``prepare``, ``feed``: the reader processes, what they prepare, and the patches they hand over;
- ``metadata``, ``features_import``: a user's CSV columns, and pre-computed patch features.
"""
