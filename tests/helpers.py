"""Helpers the test modules share: what the MigoSMTP sandbox received, and the ledger checked against it.

Every claim about what was sent reads the sandbox's own record (``record()``: the
batches it holds) or its request log (``requests()``: every API request, admin
calls aside), never the DAG's account of it. The ``audience`` fixture is in
``tests/conftest.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from include.campaign.settings import campaign_params

# The campaign's Params, read from the code: the README's Params table must document each of them.
DOCUMENTED_PARAMS: tuple[str, ...] = tuple(campaign_params())


def sends(sandbox) -> list[dict[str, Any]]:
    """Every POST the sandbox logged (a bulk send), in order, whatever its answer."""
    return [r for r in sandbox.requests() if r["method"] == "POST"]


def api_requests(sandbox) -> list[dict[str, Any]]:
    """Every request to the MigoSMTP API (``/v1/``) the sandbox logged, in order."""
    return [r for r in sandbox.requests() if r["path"].startswith("/v1/")]


def received(sandbox) -> Counter[str]:
    """How many times each address is in a batch the sandbox holds."""
    return Counter(r["to"] for b in sandbox.record()["batches"] for r in b["recipients"])


def sends_per_key(requests: Iterable[Mapping[str, Any]]) -> Counter[str]:
    return Counter(r["idempotency_key"] for r in requests if r["method"] == "POST")


def assert_ledger_matches_sandbox(
    ledger: list[dict[str, Any]],
    record: Mapping[str, Any],
    requests: list[dict[str, Any]],
    campaign_id: str,
    batches: int | None = None,
) -> None:
    """Batch for batch: the provider's id, key, slot and recipients; one counted attempt per request sent.

    ``ledger`` is the campaign's rows with their recipient ids; every row must be ``scheduled``
    and the sandbox must hold exactly these batches (``batches`` of them, when given).
    """
    sent = {b["batch_id"]: b for b in record["batches"]}
    posts = sends_per_key(requests)
    assert len(ledger) == len(sent), (len(ledger), len(sent))
    if batches is not None:
        assert len(ledger) == batches, (len(ledger), batches)
    assert {r["idempotency_key"]: r["batch_id"] for r in ledger} == {
        b["idempotency_key"]: b["batch_id"] for b in record["batches"]
    }
    for row in ledger:
        batch = sent[row["batch_id"]]
        assert row["status"] == "scheduled" and row["last_error"] is None, row
        assert row["attempts"] == posts[row["idempotency_key"]], (row, posts[row["idempotency_key"]])
        assert batch["idempotency_key"] == row["idempotency_key"]
        assert batch["send_at"] == row["send_at"]
        ids = json.loads(row["recipient_ids"])
        assert batch["recipient_count"] == row["recipient_count"] == len(ids)
        assert [r["to"].removeprefix("other").removeprefix("user") for r in batch["recipients"]] == [
            f"{i}@example.com" for i in ids
        ]
        assert f"batch:{campaign_id}:{row['batch_number']}" in batch["tags"]
