"""The ``[models]`` table of ``habitus.toml``: which providers the inference gateway talks to.

Example::

    [models]
    default = "local"

    [models.providers.local]
    base_url = "http://localhost:11434/v1"   # Ollama, vLLM, llama.cpp's server, a hosted API...
    chat_model = "llama3.1"
    embedding_model = "nomic-embed-text"
    concurrency = 4

``HABITUS_MODEL_URL``, ``HABITUS_MODEL_KEY`` and ``HABITUS_MODEL_NAME`` configure
one OpenAI-compatible provider called ``default`` without a file. With nothing
configured, the deterministic scripted model answers (offline demos and tests).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelsConfig", "ProviderConfig"]


class ProviderConfig(BaseModel):
    """One provider.

    Attributes:
        kind: ``openai`` (any OpenAI-compatible ``/v1`` endpoint) or ``scripted``.
        base_url: The endpoint's base URL, ending in ``/v1``.
        api_key: Sent as a bearer token (prefer ``HABITUS_MODEL_KEY`` to writing it in a file).
        chat_model: Model name for chat completions.
        embedding_model: Model name for embeddings.
        timeout_s: Seconds one attempt may take.
        max_retries: Attempts after the first, with exponential backoff, on connection
            errors, timeouts, 429 and 5xx answers.
        concurrency: Most calls in flight to this provider at once.
        embed_batch: Most texts per embeddings request.
        prompt_cost_per_1k: Cost of 1,000 prompt tokens (any currency), recorded with each call.
        completion_cost_per_1k: Cost of 1,000 completion tokens.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai", "scripted"] = "openai"
    base_url: str | None = None
    api_key: str | None = None
    chat_model: str | None = None
    embedding_model: str | None = None
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_retries: int = Field(default=2, ge=0, le=10)
    concurrency: int = Field(default=4, ge=1, le=1024)
    embed_batch: int = Field(default=64, ge=1, le=4096)
    prompt_cost_per_1k: float = Field(default=0.0, ge=0)
    completion_cost_per_1k: float = Field(default=0.0, ge=0)


class ModelsConfig(BaseModel):
    """Providers by name, and which one answers a call that names none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Annotated[str, Field(min_length=1)] | None = None
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
