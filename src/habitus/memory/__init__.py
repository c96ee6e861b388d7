"""Agents' memory: episodic records, bi-temporal facts, hybrid recall, forgetting — with provenance."""

from habitus.memory._embedders import (
    Embedder,
    HashEmbedder,
    LexicalEmbedder,
    LocalEmbedder,
    resolve_embedder,
)
from habitus.memory._memory import AgentMemory, MemoryService, Reranker, Summarizer
from habitus.memory._models import Fact, Forgotten, Hit, MemoryRecord, Recall
from habitus.memory._openai import OpenAIEmbedder
from habitus.memory._retrieval import Tuning

__all__ = [
    "AgentMemory",
    "Embedder",
    "Fact",
    "Forgotten",
    "HashEmbedder",
    "Hit",
    "LexicalEmbedder",
    "LocalEmbedder",
    "MemoryRecord",
    "MemoryService",
    "OpenAIEmbedder",
    "Recall",
    "Reranker",
    "Summarizer",
    "Tuning",
    "resolve_embedder",
]
