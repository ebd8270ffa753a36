"""Schemathesis against the served OpenAPI schema: hundreds of generated requests, no server error (5xx) among them."""

from __future__ import annotations

import copy
import time
from collections import Counter

import httpx
import pytest

from serving import running

schemathesis = pytest.importorskip("schemathesis")

RANDOM_EXAMPLES = 400  # over the schema as served (slide ids mostly unknown)
INDEXED_EXAMPLES = 250  # with slide ids drawn from the index, so the image, heatmap and detail routes run


def with_indexed_ids(raw: dict, ids: list[str]) -> dict:
    """The schema with every ``slide_id`` path parameter drawn from ``ids`` (and two that are not indexed)."""
    raw = copy.deepcopy(raw)
    for path in raw["paths"].values():
        for operation in path.values():
            for param in operation.get("parameters", []):
                if param["name"] == "slide_id" and param["in"] == "path":
                    param["schema"] = {"type": "string", "enum": ids + ["nope", "a'b"]}
    return raw


def fuzz(raw: dict, base: str, examples: int, statuses: list[int]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_dict(raw)

    @given(case=schema.as_strategy())
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def one(case):
        response = case.call(base_url=base, timeout=30)
        statuses.append(response.status_code)
        assert response.status_code < 500, f"{case.method} {case.formatted_path} {case.query}: {response.text[:300]}"
        if response.status_code >= 400:
            assert "error" in response.json()

    one()


def test_generated_requests_get_no_server_error(planted_index):
    from retrieval.serve.app import create_app

    start = time.perf_counter()
    statuses: list[int] = []
    with running(create_app(planted_index[0])) as base:
        raw = httpx.get(f"{base}/openapi.json").json()
        fuzz(raw, base, RANDOM_EXAMPLES, statuses)
        fuzz(with_indexed_ids(raw, [f"S0{i}" for i in range(1, 9)]), base, INDEXED_EXAMPLES, statuses)
    assert len(statuses) >= 500 and max(statuses) < 500, Counter(statuses)
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)
    assert time.perf_counter() - start < 90
