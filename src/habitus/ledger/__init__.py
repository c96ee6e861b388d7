"""The causal, tamper-evident ledger: events, kinds, proofs and verification."""

from habitus.ledger._context import CausalContext, caused_by, current_context
from habitus.ledger._kinds import KindSpec, MetaModel, all_kinds, get_kind
from habitus.ledger._ledger import Ledger
from habitus.ledger._merkle import verify_consistency, verify_inclusion
from habitus.ledger._models import (
    Checkpoint,
    ConsistencyProof,
    ContentType,
    Draft,
    Edge,
    Erasure,
    Event,
    InclusionProof,
    Page,
    Problem,
    Subgraph,
    VerifyReport,
)
from habitus.ledger._rows import EventRef
from habitus.ledger._signing import check_checkpoint
from habitus.ledger._transaction import Transaction

__all__ = [
    "CausalContext",
    "Checkpoint",
    "ConsistencyProof",
    "ContentType",
    "Draft",
    "Edge",
    "Erasure",
    "Event",
    "EventRef",
    "InclusionProof",
    "KindSpec",
    "Ledger",
    "MetaModel",
    "Page",
    "Problem",
    "Subgraph",
    "Transaction",
    "VerifyReport",
    "all_kinds",
    "caused_by",
    "check_checkpoint",
    "current_context",
    "get_kind",
    "verify_consistency",
    "verify_inclusion",
]
