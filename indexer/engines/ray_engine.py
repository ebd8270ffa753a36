"""The Ray engine: slides are tasks on encoder actors that keep the model loaded; the driver only commits.

Each actor (one per GPU, else CPU actors) encodes the slides sent to it and stages each one in the index's
``staging/`` folder on the shared file system; the driver holds the writer lock, feeds the actors through
the run's rules (``indexer.ingestion.commit``) and commits versions as they fill. A slide whose actor dies is sent
again (up to MAX_ATTEMPTS times, then it fails as itself); Ray restarts the actor.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from pathlib import Path

from indexer.engines.job import EncodeJob, run_job
from indexer.errors import UserError
from indexer.store.layout import IndexPaths
from indexer.store.staging import Staging

MAX_ATTEMPTS = 3  # sends of one slide whose worker died each time, before it fails as itself
IN_FLIGHT = 2  # slides queued per actor: the next one waits there while the current one encodes
WAIT_S = 5.0  # the driver looks at the commit clock at least this often
INSTALL = "the Ray engine needs Ray; install it with: pip install 'slidesearch[ray]'"


def import_ray():
    """Ray, or a one-line UserError saying how to install the extra."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


class SlideEncoder:
    """An encoder actor: loads the model once (again after a restart) and encodes and stages slides, with a
    reader pool of its own that lives as long as the actor (the local engine's readers: ``indexer.ingestion.stream``).

    Calls run concurrently (``max_concurrency=IN_FLIGHT``): the slide queued behind the current one is prepared
    by the readers while the current one encodes.

    Args:
        config: the run's IndexConfig.
        staging_dir: the index's ``staging/`` folder, at the same path on every node.
        readers: reader processes of this actor (0: it reads in its own process).
    """

    def __init__(self, config, staging_dir: str, readers: int = 0):
        self.config, self.staging, self.readers = config, Staging(Path(staging_dir)), readers
        self._encoder = self._service = None
        self._lock = threading.Lock()

    @property
    def encoder(self):
        with self._lock:
            if self._encoder is None:
                from indexer.models.encoders import load_encoder

                c = self.config
                self._encoder = load_encoder(c.model, checkpoint=c.checkpoint, device=c.device, batch_size=c.batch_size)
            return self._encoder

    def _stream(self):
        """The actor's stream service (its reader pool started on first use)."""
        encoder = self.encoder
        with self._lock:
            if self._service is None:
                from indexer.ingestion.stream import SlideStream, StreamService
                from indexer.ingestion.readers import ReaderPool

                pool = ReaderPool(self.readers)
                self._service = StreamService(SlideStream(self.config, encoder, self.staging, pool))
            return self._service

    def start(self, bank=None):
        """Load the model; returns its description and, when given ``bank``, the text prototypes T."""
        from indexer.aggregation.prototypes import embed_prototypes

        encoder = self.encoder
        return encoder.describe(), (embed_prototypes(bank, encoder) if bank is not None else None)

    def ping(self) -> bool:
        """True, once the actor is up (again)."""
        return True

    def encode(self, job: EncodeJob):
        """Encode and stage one slide; its outcome (never its failure) goes back to the driver."""
        if self.config.features_dir is not None:  # imported features: nothing to read ahead
            return run_job(job, self.config, self.encoder, self.staging)
        return self._stream().run(job)


class RemoteEncoder:
    """The driver's view of the encoder the actors hold: what the index records of it."""

    def __init__(self, description: dict):
        self.description = description
        self.dim = int(description["dim"])

    def describe(self) -> dict:
        return dict(self.description)


def actor_plan(resources: dict, largest_node_cpus: float, config) -> tuple[int, dict]:
    """How many encoder actors to start and the resources each one asks for.

    One actor per GPU where the cluster has GPUs and ``device`` allows them, with 1 + ``num_workers`` CPUs (the
    feeder and its patch readers; ``num_workers`` None: the cluster's CPUs per GPU); else CPU actors of
    1 + ``num_workers`` CPUs (None: 1 reader), as many as the CPUs hold. An actor starts ``num_cpus - 1`` readers.

    >>> from indexer.ingestion.config import IndexConfig
    >>> actor_plan({"CPU": 16, "GPU": 8}, 8, IndexConfig())
    (8, {'num_cpus': 2, 'num_gpus': 1})
    >>> actor_plan({"CPU": 2}, 2, IndexConfig(num_workers=0))
    (2, {'num_cpus': 1})
    """
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if gpus and config.device != "cpu":
        n = config.actors or gpus
        if n > gpus:
            raise UserError(f"--actors {n}: the Ray cluster has {gpus} GPU(s), one per encoder actor")
        readers = config.num_workers if config.num_workers is not None else max(0, cpus // gpus - 1)
        return n, {"num_cpus": max(1, min(1 + readers, int(largest_node_cpus))), "num_gpus": 1}
    if config.device == "cuda":
        raise UserError("--device cuda: the Ray cluster has no GPU")
    readers = config.num_workers if config.num_workers is not None else 1
    per = max(1, min(1 + readers, int(largest_node_cpus)))
    n = config.actors or max(1, cpus // per)
    if n * per > cpus:
        raise UserError(f"--actors {n}: each CPU encoder actor takes {per} CPU(s) (1 + --workers) and the Ray "
                        f"cluster has {cpus}")
    return n, {"num_cpus": per}


class RayEngine:
    """Encode on a Ray cluster: ``config.address`` (None: the running one, else a new local one; ``auto``:
    the running one only), with ``config.actors`` encoder actors (None: see :func:`actor_plan`).

    Args:
        config: the run's IndexConfig.
        out: the index directory, on a file system every node mounts at the same path.
        report: the run's report (notes about the cluster and retries go there).
    """

    def __init__(self, config, out: Path, report):
        self.ray = import_ray()
        self.config, self.report = config, report
        self.staging_dir = str(IndexPaths(Path(out).resolve()).staging)
        self.actors: list = []
        self._owns_ray = False

    def __enter__(self) -> "RayEngine":
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.config.address, include_dashboard=False, log_to_driver=False,
                         logging_level="error")
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = self.config.address or "this machine"
                raise UserError(f"cannot reach a Ray cluster at {where}: {str(exc).splitlines()[0][:300]}") from None
            self._owns_ray = True
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._owns_ray:
            self.ray.shutdown()

    def load(self, bank):
        """Start the actors and load the model in each; returns the encoder's description and T."""
        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        largest = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        n, resources = actor_plan(ray.cluster_resources(), largest, self.config)
        Actor = ray.remote(SlideEncoder).options(max_restarts=-1, max_task_retries=0, max_concurrency=IN_FLIGHT + 1,
                                                 **resources)
        readers = int(resources["num_cpus"]) - 1
        self.actors = [Actor.remote(self.config, self.staging_dir, readers) for _ in range(n)]
        try:
            started = self._get([a.start.remote(bank if i == 0 else None) for i, a in enumerate(self.actors)])
        except ray.exceptions.RayError as exc:
            raise UserError(f"an encoder actor died while loading the model: {str(exc).splitlines()[0][:300]}") from None
        weights = {d["weights_sha256"] for d, _ in started}
        if len(weights) > 1:
            raise UserError("the encoder actors loaded different weights; put the same --checkpoint on every node")
        kind = f"{'GPU, ' if resources.get('num_gpus') else ''}{resources['num_cpus']} CPU(s) each, {readers} reader(s)"
        self.report.notes.append(f"ray: {n} encoder actor(s) ({kind}) on {len(nodes)} node(s)")
        return RemoteEncoder(started[0][0]), started[0][1]

    def index(self, run, slides) -> None:
        """Feed the actors the run's jobs, IN_FLIGHT at a time each, and hand every outcome back to the run.

        An actor whose process died gets no work until it answers a ping (Ray restarts it), so the slides sent
        again never fail at once against an actor that is still coming back. An actor works on its slides
        concurrently (the next one is prepared while the current one encodes), so a slide sent again goes to an
        actor alone: a slide that kills its worker then takes no other slide with it.
        """
        ray = self.ray
        jobs, again, exhausted = run.jobs(slides), deque(), False
        inflight: dict = {}  # ObjectRef → (job, actor index)
        probes: dict = {}  # ObjectRef of a ping → the actor index it asks after
        resting: dict[int, float] = {}  # actor index → when to ping it again
        working, load, attempts = set(range(len(self.actors))), Counter(), Counter()
        alone: set[int] = set()  # actors working on a slide sent again, and on nothing else
        while True:
            now = time.monotonic()
            for i in [i for i, at in resting.items() if at <= now]:
                del resting[i]
                probes[self.actors[i].ping.remote()] = i
            for i in sorted(working):
                while load[i] < IN_FLIGHT and i not in alone:
                    if again and load[i]:
                        break
                    job = again.popleft() if again else None if exhausted else next(jobs, None)
                    if job is None:
                        exhausted = exhausted or not again
                        break
                    if attempts[job.slide_id]:
                        alone.add(i)
                    inflight[self.actors[i].encode.remote(job)] = (job, i)
                    load[i] += 1
            if not inflight and not again and exhausted:
                break
            if not (working or probes or resting):
                raise UserError("every encoder actor died; re-run the same command to resume")
            waiting = [*inflight, *probes]
            pause = min([WAIT_S, *(at - now for at in resting.values())])
            ready = ray.wait(waiting, num_returns=1, timeout=max(pause, 0.05))[0] if waiting else time.sleep(pause)
            if not ready:
                run.commit_if_due()
                continue
            if ready[0] in probes:
                self._answer(probes.pop(ready[0]), ready[0], working, resting)
                continue
            job, i = inflight.pop(ready[0])
            load[i] -= 1
            if not load[i]:
                alone.discard(i)
            try:
                outcome = self._get(ready[0])
            except ray.exceptions.RayTaskError:  # raised inside the actor's code: not a death, not this slide's
                raise
            except ray.exceptions.RayError as exc:  # the worker died (killed, node lost, out of memory)
                attempts[job.slide_id] += 1
                if i in working:
                    working.discard(i)
                    probes[self.actors[i].ping.remote()] = i
                if attempts[job.slide_id] < MAX_ATTEMPTS:
                    again.append(job)
                    continue
                outcome = job.failed(f"its worker died {MAX_ATTEMPTS} times while encoding it "
                                     f"({str(exc).splitlines()[0][:200]})")
            run.accept(job, outcome)
        retried = sorted(attempts)
        if retried:
            self.report.notes.append(f"ray: sent again after their worker died: {', '.join(retried[:20])}"
                                     + (f" and {len(retried) - 20} more" if len(retried) > 20 else ""))

    def _answer(self, i: int, ref, working: set, resting: dict) -> None:
        """Actor ``i`` answered a ping: back to work, ping again in a second (still restarting), or gone for good."""
        try:
            self.ray.get(ref)
            working.add(i)
        except self.ray.exceptions.ActorDiedError:
            self.report.notes.append(f"ray: encoder actor {i} is gone for good; the run goes on without it")
        except self.ray.exceptions.RayError:
            resting[i] = time.monotonic() + 1.0

    def _get(self, refs):
        """ray.get, with an error raised inside an actor (a bad checkpoint, a full disk) as itself, in one line."""
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (UserError, OSError)):
                raise cause from None
            raise
