"""Live updates: an `index` run commits a version while requests stream in; none fails and the new slide appears."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx

from benchmarks.fixtures import planted
from indexer.ingestion.run import run_index
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide
from serving import running


def test_server_moves_to_a_new_version_without_dropping_a_request(planted_index, tmp_path):
    from retrieval.serve.app import create_app

    source, _, config = planted_index
    index = tmp_path / "idx"
    shutil.copytree(source, index)
    app = create_app(index)
    live = app.state.service.live
    before = live.current()
    outcomes: list[tuple[int, str]] = []
    stop = threading.Event()

    with running(app) as base:
        def stream() -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                while not stop.is_set():
                    for url, params in (("/api/search/text", {"q": "adipose", "k": 3}),
                                        ("/api/search/slide", {"slide_id": "S01", "k": 9}), ("/api/health", {})):
                        response = client.get(url, params=params)
                        outcomes.append((response.status_code, response.text))

        clients = [threading.Thread(target=stream) for _ in range(3)]
        for t in clients:
            t.start()
        time.sleep(0.5)
        new = tmp_path / "new"
        new.mkdir()
        px = planted.SLIDE_PX
        write_slide(new / "S09.tiff", SyntheticSlideSpec(px, px, (Region(0, 0, px, px, "adipose"),), mpp=0.25, seed=9))
        report = run_index([new], index, config, show_progress=False)
        assert "S09" in report.indexed
        deadline = time.monotonic() + 20
        while live.version == before.catalog.snapshot.version.number and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # requests keep streaming on the new version
        stop.set()
        for t in clients:
            t.join()
        with httpx.Client(base_url=base, timeout=30) as client:
            hits = client.get("/api/search/text", params={"q": "adipose", "k": 1}).json()["hits"]
            health = client.get("/api/health").json()

    failures = [o for o in outcomes if o[0] != 200]
    assert len(outcomes) > 30 and not failures, failures[:3]
    assert live.swaps == 1 and health["version"] == live.version > before.catalog.snapshot.version.number
    assert hits[0]["slide_id"] == "S09"  # all adipose: first for "adipose"
    slide_answers = [json.loads(text) for _, text in outcomes if text.startswith('{"kind":"slide"')]
    assert slide_answers and any(h["slide_id"] == "S09" for a in slide_answers for h in a["hits"])  # seen while streaming
    # a searcher taken before the commit still answers from its own version
    assert "S09" not in before.search_slide("S01", k=9).slide_ids
