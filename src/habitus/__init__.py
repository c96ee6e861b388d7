"""Habitus: a habitat for AI agents, with one causal, tamper-evident ledger of everything.

The public API is re-exported here; everything under a ``_private`` name may change.
"""

from habitus._habitat import Habitat
from habitus._settings import Settings
from habitus._sync import SyncHabitat, SyncLedger
from habitus._version import __version__
from habitus.agents import Agent, AgentContext, AgentInfo, App, Message, handles
from habitus.errors import HabitatError
from habitus.ledger import (
    Checkpoint,
    ConsistencyProof,
    Draft,
    Edge,
    Erasure,
    Event,
    InclusionProof,
    Ledger,
    Page,
    Problem,
    Subgraph,
    Transaction,
    VerifyReport,
    caused_by,
    check_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from habitus.memory import AgentMemory, Fact, Hit, MemoryRecord, Recall
from habitus.thinking import ThinkingAgent

__all__ = [
    "Agent",
    "AgentContext",
    "AgentInfo",
    "AgentMemory",
    "App",
    "Checkpoint",
    "ConsistencyProof",
    "Draft",
    "Edge",
    "Erasure",
    "Event",
    "Fact",
    "Habitat",
    "HabitatError",
    "Hit",
    "InclusionProof",
    "Ledger",
    "MemoryRecord",
    "Message",
    "Page",
    "Problem",
    "Recall",
    "Settings",
    "Subgraph",
    "SyncHabitat",
    "SyncLedger",
    "ThinkingAgent",
    "Transaction",
    "VerifyReport",
    "__version__",
    "caused_by",
    "check_checkpoint",
    "handles",
    "verify_consistency",
    "verify_inclusion",
]
