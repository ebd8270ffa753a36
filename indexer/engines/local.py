"""The local engine (the default): this process encodes the run's slides in input order, reader processes
preparing and reading ahead of it (``indexer.ingestion.stream``)."""

from __future__ import annotations

from indexer.engines.job import run_job


class LocalEngine:
    """Encode in this process with one encoder; needs nothing beyond slidesearch itself.

    Args:
        config: the run's IndexConfig.
    """

    def __init__(self, config):
        self.config = config
        self.encoder = None
        self.pool = None

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.encoder = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def load(self, bank):
        """Start the reader processes (their imports warm up meanwhile), then load the encoder; returns it and
        the bank's text prototypes T."""
        from indexer.models.encoders import load_encoder, resolve_device
        from indexer.aggregation.prototypes import embed_prototypes
        from indexer.ingestion.readers import ReaderPool, resolve_workers

        c = self.config
        if c.features_dir is None:  # imported features: nothing to read
            self.pool = ReaderPool(resolve_workers(c.num_workers, resolve_device(c.device)))
        self.encoder = load_encoder(c.model, checkpoint=c.checkpoint, device=c.device, batch_size=c.batch_size)
        return self.encoder, embed_prototypes(bank, self.encoder)

    def index(self, run, slides) -> None:
        """Encode each slide the run's rules hand out and give its outcome back, in input order."""
        from indexer.ingestion.stream import SlideStream, run_stream

        if self.pool is None:
            for job in run.jobs(slides):
                run.accept(job, run_job(job, self.config, self.encoder, run.writer.staging, run.progress))
            return
        with SlideStream(self.config, self.encoder, run.writer.staging, self.pool, run.progress) as stream:
            run_stream(stream, run.jobs(slides), run.accept)
