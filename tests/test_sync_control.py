"""The sync facade of the control layer: ``SyncHabitat.control`` and ``SyncHabitat.acting_as``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from habitus import Settings, SyncHabitat
from habitus.errors import ApprovalPendingError, PolicyDeniedError


@pytest.fixture
def hab(tmp_path: Path) -> Iterator[SyncHabitat]:
    """A new habitat with the hash embedder (no model to load), opened with the sync facade."""
    settings = Settings.resolve(config_file=None, environ={"HABITUS_EMBEDDER": "hash"}, path=tmp_path / "h")
    opened = SyncHabitat.init(settings.path, settings=settings)
    try:
        yield opened
    finally:
        opened.close()


def test_grants_change_what_a_principal_may_do(hab: SyncHabitat) -> None:
    hab.spawn("scout", owner="human:ada")
    ada, bob = hab.acting_as("human:ada"), hab.acting_as("human:bob")
    assert (ada.principal, ada.on_behalf_of) == ("human:ada", None)
    ada.memory("scout").remember("The north bridge is closed for repairs")

    with pytest.raises(PolicyDeniedError, match="human:bob may not message:send agent:scout"):
        bob.send("scout", "hello")
    with pytest.raises(PolicyDeniedError, match="human:bob may not memory:read scope:agent:scout"):
        bob.memory("scout").recall("bridge")
    assert not hab.control.decide("human:bob", "memory:read", "scope:agent:scout").allowed

    cap = ada.grant("human:bob", "memory:read", "scope:agent:scout")  # ada holds it as the owner
    assert [c.id for c in hab.control.capabilities("human:bob")] == [cap.id]
    hits = bob.memory("scout").recall("is the bridge open?").hits
    assert [h.record.text for h in hits] == ["The north bridge is closed for repairs"]

    ada.revoke(cap.id)
    with pytest.raises(PolicyDeniedError):
        bob.memory("scout").recall("bridge")
    denied = hab.ledger.query(kind="policy.denied").events
    assert [e.meta["action"] for e in denied] == ["message:send", "memory:read", "memory:read"]


def test_approvals_budgets_and_labels_through_the_facade(hab: SyncHabitat) -> None:
    hab.spawn("worker", owner="human:ada")
    hab.control.grant("agent:worker", "tool:call", "shell", approval=True)
    worker = hab.acting_as("agent:worker")
    with pytest.raises(ApprovalPendingError):
        worker.authorize("tool:call", "shell", timeout=0.01)
    (pending,) = hab.control.approvals()
    assert (pending.principal, pending.resource) == ("agent:worker", "tool:shell")
    decided = hab.acting_as("human:ada").approve(pending.id, reason="fine")
    assert (decided.status, decided.decided_by, decided.reason) == ("approved", "human:ada", "fine")
    assert hab.control.approval(pending.id).status == "approved"

    hab.control.set_budget("agent:worker", "messages", 1)
    assert [(b.subject, b.meter, b.limit, b.used) for b in hab.control.budgets()] == [
        ("agent:worker", "messages", 1, 0)
    ]
    hab.control.label("source:*", "trusted")
    assert hab.control.trust_of("source:sensor-7") == "trusted"
