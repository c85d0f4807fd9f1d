"""The n choices of one request tokenize its prompt once.

The server submits each choice as its own engine request; the engine keeps
the token ids of the last prompt text tokenized for a prompt group and the
other choices reuse them (engine.c, last_prompt).  Tokenizing runs on the
engine thread: a 1 MB prompt takes ~0.1 s there, so with n = 128 it stalled
every stream for seconds.  paraserve_prompt_tokenizations_total counts the
texts tokenized.  Checked: n = 8 on completions and on chat -> 1; the same
prompt sent again as a new request -> 1 more (the cache is per request, not
a prompt cache); two requests with different prompts -> 2; the choices'
answers are what n = 1 gives with the same seed (the reused ids are the
prompt's ids).

A prompt whose bytes alone prove it longer than the context is refused
before it is tokenized: 400 context_length_exceeded, nothing tokenized.
The bound counts only bytes with a token of their own (every one of them
ends up in some token, of at most the longest token's bytes): a byte
without one (SmolLM2 has none for 0x04 and a few other control bytes) may
be dropped, so a long run of them is still tokenized and served.
"""
import uuid

import openai
import pytest

from server_fixtures import *  # noqa: F401,F403  (fixtures: start_server, server)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=300)


def _tokenizations(server):
    return server.metrics()["paraserve_prompt_tokenizations_total"]


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_n_choices_tokenize_the_prompt_once(client, server, chat):
    prompt = f"Request {uuid.uuid4()}: name three rivers and one fact about each."
    kw = dict(model="default", n=8, max_tokens=3, temperature=0.9, seed=11)
    t0 = _tokenizations(server)
    if chat:
        r = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kw)
    else:
        r = client.completions.create(prompt=prompt, **kw)
    assert len(r.choices) == 8
    assert _tokenizations(server) - t0 == 1
    # a new request with the same text tokenizes it again (one request's choices share, nothing more)
    if chat:
        client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kw)
    else:
        client.completions.create(prompt=prompt, **kw)
    assert _tokenizations(server) - t0 == 2


def test_reused_ids_are_the_prompts_ids(client, server):
    prompt = f"Note {uuid.uuid4()}: the quick brown fox"
    t0 = _tokenizations(server)
    many = client.completions.create(model="default", prompt=prompt, n=3, max_tokens=8, temperature=0.8, seed=21)
    assert _tokenizations(server) - t0 == 1
    for i, c in enumerate(many.choices):
        one = client.completions.create(model="default", prompt=prompt, max_tokens=8, temperature=0.8, seed=21 + i)
        assert c.text == one.choices[0].text, i
        assert many.usage.prompt_tokens == one.usage.prompt_tokens


def test_single_requests_count_one_each(client, server):
    t0 = _tokenizations(server)
    for _ in range(2):
        client.completions.create(model="default", prompt=f"Hello {uuid.uuid4()}", max_tokens=1)
    assert _tokenizations(server) - t0 == 2


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_a_prompt_longer_than_any_context_is_refused_untokenized(client, server, chat):
    big = "word " * 180000   # 900 KB
    t0 = _tokenizations(server)
    with pytest.raises(openai.BadRequestError) as ei:
        if chat:
            client.chat.completions.create(model="default", messages=[{"role": "user", "content": big}], n=4,
                                           max_tokens=1)
        else:
            client.completions.create(model="default", prompt=big, n=4, max_tokens=1)
    err = ei.value.body
    assert err["code"] == "context_length_exceeded" and err["param"] == ("messages" if chat else "prompt"), err
    assert "longer than the context" in err["message"], err
    assert _tokenizations(server) == t0
    # the server still serves
    r = client.completions.create(model="default", prompt="Hi", max_tokens=1)
    assert r.choices[0].finish_reason in ("length", "stop")


def test_bytes_without_a_token_do_not_count_toward_the_bound(client, server):
    # 81 bytes x 2048 + margin of U+0004, which SmolLM2's vocabulary has no token for: dropped by the
    # tokenizer, so the prompt is "Hi" and a few tokens - it must be served, not refused unread
    t0 = _tokenizations(server)
    r = client.completions.create(model="default", prompt="Hi" + "\u0004" * (81 * 2048 + 200), max_tokens=2)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens < 10, r.usage
    assert _tokenizations(server) - t0 == 1
