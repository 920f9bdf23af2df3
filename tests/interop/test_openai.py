"""The official OpenAI Python SDK against skygate's OpenAI-compatible routes, with real models
(SmolLM2-135M Q4_1 and all-MiniLM-L6-v2 from scripts/models.sh, found in the data dir's models/
folder with no configuration). The SDK trusts the local CA through its http_client, and is used
unchanged: chat (plain and streamed), stop and max_tokens, embeddings (float and base64), each error
class, and an async client with concurrent streams."""

import asyncio
import base64
import os
import ssl
import struct
from pathlib import Path

import httpx
import openai
import pytest

from conftest import Skygate

LLM = "smollm2-135m-instruct.q4_1"
EMB = "all-minilm-l6-v2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "all-MiniLM-L6-v2"


def models_dir() -> Path:
    d = os.environ.get("SKYGATE_TEST_MODELS")
    if not d or not (Path(d) / GGUF).exists() or not (Path(d) / MINILM).exists():
        if os.environ.get("SKYGATE_TEST_REQUIRE_ALL", "0") not in ("", "0"):
            pytest.fail("SKYGATE_TEST_MODELS does not hold the test models (run scripts/models.sh)")
        pytest.skip("SKYGATE_TEST_MODELS does not hold the test models (run scripts/models.sh)")
    return Path(d)


@pytest.fixture(scope="module")
def server():
    models = models_dir()
    s = Skygate()
    # The models' sandboxes run as unprivileged users: the data dir must be reachable (mkdtemp makes 0700).
    os.chmod(s.tmp.name, 0o755)
    found = s.data / "models"
    found.mkdir(parents=True)
    (found / GGUF).symlink_to(models / GGUF)
    (found / MINILM).symlink_to(models / MINILM)
    (found / "broken.gguf").write_bytes(b"GGUF but not really a model")
    # The free tier gets a tiny create limit, to meet a 429; the main account is on pro.
    (s.data / "skygate.toml").write_text(
        "[limits.tiers.free]\nrequests_per_minute = 600\npredictions_per_minute = 2\nconcurrent_predictions = 5\n"
    )
    acct = s.cli("accounts", "create", "--email", "openai@example.com")
    s.cli("accounts", "set-tier", "openai@example.com", "pro")
    proj = s.cli("projects", "create", "--account", acct, "--name", "openai")
    s.live_key = s.cli("keys", "create", "--project", proj, "--name", "openai live")
    s.test_key = s.cli("keys", "create", "--project", proj, "--test")
    free = s.cli("accounts", "create", "--email", "free@example.com")
    free_proj = s.cli("projects", "create", "--account", free, "--name", "free")
    s.free_key = s.cli("keys", "create", "--project", free_proj, "--name", "free live")
    s.start()
    yield s
    s.stop()


def client(s, key=None, **kw) -> openai.OpenAI:
    ctx = ssl.create_default_context(cafile=s.ca)
    return openai.OpenAI(
        api_key=key or s.live_key,
        base_url=f"{s.url}/v1",
        http_client=httpx.Client(verify=ctx),
        max_retries=0,
        **kw,
    )


def ask(content: str, **kw) -> dict:
    return dict(model=LLM, messages=[{"role": "user", "content": content}], temperature=0, **kw)


def test_chat_plain_and_streamed_agree(server):
    c = client(server)
    r = c.chat.completions.create(**ask("What is the capital of France?", max_tokens=24))
    assert r.object == "chat.completion" and r.model == LLM
    text = r.choices[0].message.content
    assert len(text.split()) >= 3, text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = c.chat.completions.create(
        **ask("What is the capital of France?", max_tokens=24), stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            if ch.delta.content:
                pieces.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    assert roles == ["assistant"]
    assert len(pieces) > 1
    assert "".join(pieces) == text
    assert finish == r.choices[0].finish_reason
    assert usage.completion_tokens == r.usage.completion_tokens


def test_stop_and_max_tokens(server):
    c = client(server)
    r = c.chat.completions.create(**ask("Count from one to twenty in words.", max_tokens=3))
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    full = c.chat.completions.create(**ask("Write two sentences about the sea.", max_tokens=40)).choices[0].message.content
    assert len(full) > 20, full
    stop = full[12:16]
    cut = c.chat.completions.create(**ask("Write two sentences about the sea.", max_tokens=40, stop=[stop, "\u00a7\u00a7"]))
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]
    # Seeded sampling repeats itself.
    kw = dict(model=LLM, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=1.0, seed=42)
    assert c.chat.completions.create(**kw).choices[0].message.content == c.chat.completions.create(**kw).choices[0].message.content


def test_embeddings_float_and_base64(server):
    c = client(server)
    sentences = ["The cat sat on the mat.", "A feline rested on the rug.", "Interest rates rose again."]
    # The SDK asks for base64 by default and decodes it itself.
    default = c.embeddings.create(model=EMB, input=sentences)
    assert [d.index for d in default.data] == [0, 1, 2]
    assert all(len(d.embedding) == 384 for d in default.data)
    floats = c.embeddings.create(model=EMB, input=sentences, encoding_format="float")
    raw = c.embeddings.create(model=EMB, input=sentences, encoding_format="base64")
    for a, b, d in zip(default.data, floats.data, raw.data):
        decoded = struct.unpack(f"<{384}f", base64.b64decode(d.embedding))
        assert list(decoded) == pytest.approx(b.embedding, abs=1e-7)
        assert a.embedding == pytest.approx(b.embedding, abs=1e-7)
    dot = lambda x, y: sum(p * q for p, q in zip(x, y))
    v = [d.embedding for d in floats.data]
    assert dot(v[0], v[1]) > dot(v[0], v[2]) + 0.2
    assert floats.usage.prompt_tokens > 10


def test_each_error_class(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(**ask("hi", max_tokens=4), n=2)
    assert e.value.code == "unsupported_parameter" and e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "word " * 9000}], max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError) as e:
        client(server, key="sk_live_not_a_key").chat.completions.create(**ask("hi", max_tokens=4))
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        client(server, key=server.test_key).chat.completions.create(**ask("hi", max_tokens=4))
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model=LLM, input="hi")
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503
    free = client(server, key=server.free_key)
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(4):
            free.chat.completions.create(**ask("hi", max_tokens=1))
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_async_client_with_concurrent_streams(server):
    async def main():
        ctx = ssl.create_default_context(cafile=server.ca)
        ac = openai.AsyncOpenAI(
            api_key=server.live_key, base_url=f"{server.url}/v1",
            http_client=httpx.AsyncClient(verify=ctx), max_retries=0,
        )

        async def one(q: str) -> str:
            stream = await ac.chat.completions.create(**ask(q, max_tokens=16), stream=True)
            out = []
            async for chunk in stream:
                for ch in chunk.choices:
                    out.append(ch.delta.content or "")
            return "".join(out)

        qs = ["Name a fruit.", "Name a planet.", "Name an ocean."]
        streamed = await asyncio.gather(*(one(q) for q in qs))
        plain = [
            (await ac.chat.completions.create(**ask(q, max_tokens=16))).choices[0].message.content for q in qs
        ]
        await ac.close()
        return streamed, plain

    streamed, plain = asyncio.run(main())
    assert streamed == plain
    assert all(s for s in streamed)
