"""An OpenAI-compatible ``/v1/embeddings`` endpoint as an embedder (vLLM, Ollama, llama.cpp, hosted APIs)."""

from __future__ import annotations

import json
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.client import HTTPException
from typing import TYPE_CHECKING, Any

import numpy as np

from habitus._version import __version__
from habitus.errors import EmbedderError, InvalidRequestError

if TYPE_CHECKING:
    pass
from habitus.memory._embedders import Vectors, _normalise, logger

__all__ = ["EmbeddingEndpointError", "OpenAIEmbedder"]

_RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_MAX_BACKOFF_S = 30.0


class EmbeddingEndpointError(EmbedderError):
    """An embeddings endpoint refused, timed out or answered nonsense, after any retries.

    Attributes:
        url: The endpoint that failed (``None`` for a local model).
        status: The last HTTP status received, or ``None`` when none was (connection
            error, timeout, malformed body).
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class OpenAIEmbedder:
    """Any OpenAI-compatible ``POST {base_url}/embeddings`` endpoint.

    Works with OpenAI and with local servers that speak the same API (vLLM, Ollama,
    llama.cpp's server, text-embeddings-inference). Inputs are sent in batches; each
    batch is retried on 408/409/429/5xx, connection errors and timeouts with exponential
    backoff (honouring ``Retry-After``). Either every text is embedded or an error is
    raised: never a partial result. Only the standard library is used.

    Args:
        base_url: The API root, e.g. ``"http://localhost:8000/v1"``.
        model: The model name the server expects.
        api_key: Sent as a bearer token when given.
        timeout: Seconds to wait for each request's connection and each read.
        batch_size: Texts per request.
        max_retries: Retries per batch after the first attempt.
        dimensions: Ask the server for vectors of this size (models that support
            shortening, such as ``text-embedding-3-*``).
        retry_backoff: Seconds before the first retry; doubled for each further one
            (capped at 30 s), with jitter.

    Raises:
        InvalidRequestError: A malformed URL or an out-of-range parameter.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        batch_size: int = 128,
        max_retries: int = 3,
        dimensions: int | None = None,
        retry_backoff: float = 0.5,
    ) -> None:
        if not re.match(r"https?://[^/\s]+", base_url):
            raise InvalidRequestError(
                f"base_url must be an http(s) URL such as 'http://localhost:8000/v1', got {base_url!r}"
            )
        if not model:
            raise InvalidRequestError("an OpenAI-compatible embedder needs a model name")
        if batch_size < 1 or max_retries < 0 or timeout <= 0 or retry_backoff < 0:
            raise InvalidRequestError(
                f"need batch_size >= 1, max_retries >= 0, timeout > 0 and retry_backoff >= 0; got {batch_size!r}, "
                f"{max_retries!r}, {timeout!r} and {retry_backoff!r}"
            )
        if dimensions is not None and dimensions < 1:
            raise InvalidRequestError(f"dimensions must be at least 1, got {dimensions!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name: str = f"openai:{model}@{self.base_url}" + (f"#{dimensions}" if dimensions else "")
        self.url = f"{self.base_url}/embeddings"
        self._api_key = api_key
        self._timeout = timeout
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._dimensions = dimensions
        self._retry_backoff = retry_backoff
        self._dim: int | None = dimensions

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(name={self.name!r})"

    @property
    def dim(self) -> int:
        """The vector size: ``dimensions`` if given, else learnt from the first response.

        Before any embedding has been made, reading this sends one short request.
        """
        if self._dim is None:
            self._dim = self._post(["dimension probe"]).shape[1]
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``, ``batch_size`` at a time, in order."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = [self._post(list(texts[i : i + self._batch_size])) for i in range(0, len(texts), self._batch_size)]
        return np.concatenate(batches) if len(batches) > 1 else batches[0]

    def _post(self, batch: list[str]) -> Vectors:
        payload: dict[str, Any] = {"model": self.model, "input": batch}
        if self._dimensions is not None:
            payload["dimensions"] = self._dimensions
        body = json.dumps(payload).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"habitus/{__version__}",
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempt = 0
        while True:
            status: int | None = None
            retry_after: float | None = None
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self._timeout) as response:
                    raw = response.read()
                return self._parse(raw, len(batch))
            except urllib.error.HTTPError as exc:
                status, detail = exc.code, _error_detail(exc)
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                problem = f"HTTP {status}{': ' + detail if detail else ''}"
                retryable = status in _RETRY_STATUSES
            except (TimeoutError, urllib.error.URLError, ConnectionError, HTTPException) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                timed_out = isinstance(reason, TimeoutError)
                problem = f"timed out after {self._timeout:g} s" if timed_out else f"connection failed: {reason}"
                retryable = True
            if not retryable or attempt >= self._max_retries:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise EmbeddingEndpointError(
                    f"embedding request to {self.url} failed{tries}: {problem}", url=self.url, status=status
                )
            delay = min(self._retry_backoff * 2**attempt, _MAX_BACKOFF_S) * (0.5 + random.random() / 2)
            if retry_after is not None:
                delay = max(delay, retry_after)
            logger.warning("embedding request to %s failed (%s); retrying in %.1f s", self.url, problem, delay)
            time.sleep(delay)
            attempt += 1

    def _parse(self, raw: bytes, count: int) -> Vectors:
        def malformed(why: str) -> EmbeddingEndpointError:
            return EmbeddingEndpointError(f"malformed response from {self.url}: {why}", url=self.url, status=200)

        try:
            document = json.loads(raw)
        except ValueError:
            raise malformed(f"not JSON: {raw[:200]!r}") from None
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, list):
            raise malformed(f"no 'data' list in {str(document)[:200]!r}")
        if len(data) != count:
            raise malformed(f"{len(data)} embeddings for {count} inputs")
        rows: list[Any] = [None] * count
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
                raise malformed(f"bad or repeated index {index!r}")
            rows[index] = item.get("embedding")
        try:
            vectors = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError):
            raise malformed("embeddings are not lists of numbers of one length") from None
        if vectors.ndim != 2 or vectors.shape[1] == 0 or not np.isfinite(vectors).all():
            raise malformed(f"embeddings have shape {vectors.shape} or non-finite values")
        if self._dim is not None and vectors.shape[1] != self._dim:
            raise malformed(f"vectors of size {vectors.shape[1]}, expected {self._dim}")
        self._dim = vectors.shape[1]
        return _normalise(vectors)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(500).decode("utf-8", "replace")
    except (OSError, HTTPException):
        return ""
    try:
        message = json.loads(text)["error"]
        text = str(message.get("message", message) if isinstance(message, dict) else message)
    except (ValueError, KeyError, TypeError):
        pass
    return " ".join(text.split())[:200]


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), _MAX_BACKOFF_S) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
