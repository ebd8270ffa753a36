"""The local engine (the default): one process encodes the slides one after another, in input order."""

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

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.encoder = None

    def load(self, bank):
        """Load the encoder; returns it and the bank's text prototypes T."""
        from indexer.encoders import load_encoder
        from indexer.prototypes import embed_prototypes

        c = self.config
        self.encoder = load_encoder(c.model, checkpoint=c.checkpoint, device=c.device, batch_size=c.batch_size)
        return self.encoder, embed_prototypes(bank, self.encoder)

    def index(self, run, slides) -> None:
        """Encode each slide the run's rules hand out and give its outcome back, one at a time."""
        for job in run.jobs(slides):
            run.accept(job, run_job(job, self.config, self.encoder, run.writer.staging, run.progress))
