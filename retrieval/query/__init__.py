"""The query pipeline: every search flows one way through parse → sources → fuse → explain → results.

- open index: ``index.OpenIndex`` (one committed version: ``catalog.Catalog``, ``arrays.IndexArrays``, the
  encoder, the knowledge bank, the report tables), which ``retrieval.search.SlideSearcher`` extends with the
  query methods of the Python API;
- parse: ``parse`` (text embedding with prompt ensembling and knowledge-bank expansion, negation-aware;
  regions and query images), ``filters`` (``--where`` SQL, sandboxed), ``options`` (the search options the
  CLI and the HTTP API share);
- sources, each returning scored slides: ``image`` (image vectors: text-as-vector, slide and patch
  queries), ``report_search`` + ``report_source`` (report lexical and dense views, attribute filters),
  ``cases`` (case-level and cross-stain), ``spaces`` (imported slide-encoder spaces);
- fuse: ``fuse`` (weighted image evidence, RRF of image and report rankings, mean over a report's
  attributes, final order), driven by ``text`` (text queries) and ``report_to_slide`` (report queries);
- explain: ``explain`` (the prototypes and patches shown with each hit, and the hit records);
- results: ``results`` (hits, JSON, CSV), ``geojson`` (QuPath export), ``thumbnails``; ``case_columns``
  derives the case and stain columns of the catalog.
"""
