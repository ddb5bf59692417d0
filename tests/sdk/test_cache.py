"""The response cache seen through the official SDKs: hits, misses and bypasses on every
cached endpoint, and answers replayed in the other shape parse as the SDKs expect."""

import anthropic
import openai
from conftest import KEY

CACHED = {"x-tollgate-feature": "cached"}
MESSAGES = [{"role": "user", "content": "Name three rivers."}]


def openai_client(proxy):
    return openai.OpenAI(base_url=proxy.base + "/v1", api_key=KEY, max_retries=0, default_headers=CACHED)


def anthropic_client(proxy):
    return anthropic.Anthropic(base_url=proxy.base, api_key=KEY, max_retries=0, default_headers=CACHED)


def assert_savings(proxy, n, spent_index, hit_indexes):
    """Hits record no spend, and the spent request's tokens and cost as their savings."""
    recs = proxy.records(n)
    spent = recs[spent_index]
    assert not spent["cache_hit"] and spent["input_tokens"] > 0 and float(spent["cost_usd"]) > 0
    for i in hit_indexes:
        hit = recs[i]
        assert hit["cache_hit"], hit
        assert (hit["input_tokens"], hit["output_tokens"], float(hit["cost_usd"])) == (0, 0, 0.0)
        assert hit["saved_input_tokens"] == spent["input_tokens"]
        assert hit["saved_output_tokens"] == spent["output_tokens"]
        assert hit["saved_cost_usd"] == spent["cost_usd"]


def test_openai_chat_hit_miss_and_bypass(proxy):
    chat = openai_client(proxy).chat.completions.with_raw_response
    first = chat.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
    assert first.headers["x-tollgate-cache"] == "miss"
    second = chat.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
    assert second.headers["x-tollgate-cache"] == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().usage == first.parse().usage
    bypass = chat.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0, extra_headers={"cache-control": "no-cache"}
    )
    assert bypass.headers["x-tollgate-cache"] == "bypass"
    assert_savings(proxy, 3, 0, [1])
    assert not proxy.records(3)[2]["cache_hit"]


def test_openai_stream_serves_whole_clients_and_whole_answers_serve_streams(proxy):
    client = openai_client(proxy)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
    assert whole.choices[0].message.content == streamed
    assert whole.choices[0].finish_reason == "stop" and whole.usage.completion_tokens > 0

    # A whole answer first, then streamed with usage asked for.
    other = [{"role": "user", "content": "Name three lakes."}]
    whole = client.chat.completions.create(model="gpt-4o-mini", messages=other, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=other,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage == whole.usage
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert_savings(proxy, 4, 0, [1])
    assert_savings(proxy, 4, 2, [3])


def test_openai_responses_in_both_shapes(proxy):
    responses = openai_client(proxy).responses
    first = responses.with_raw_response.create(model="gpt-4o-mini", input="Name a sea.", temperature=0)
    assert first.headers["x-tollgate-cache"] == "miss"
    second = responses.with_raw_response.create(model="gpt-4o-mini", input="Name a sea.", temperature=0)
    assert second.headers["x-tollgate-cache"] == "hit"
    assert second.parse().output_text == first.parse().output_text
    with responses.stream(model="gpt-4o-mini", input="Name a sea.", temperature=0) as stream:
        final = stream.get_final_response()
    assert final.output_text == first.parse().output_text
    assert final.usage == first.parse().usage
    bypass = responses.with_raw_response.create(
        model="gpt-4o-mini", input="Name a sea.", temperature=0, extra_headers={"x-tollgate-cache": "bypass"}
    )
    assert bypass.headers["x-tollgate-cache"] == "bypass"
    assert_savings(proxy, 4, 0, [1, 2])
    assert not proxy.records(4)[3]["cache_hit"]


def test_openai_embeddings(proxy):
    embeddings = openai_client(proxy).embeddings.with_raw_response
    first = embeddings.create(model="gpt-4o-mini", input=["a sea", "a lake"])
    second = embeddings.create(model="gpt-4o-mini", input=["a sea", "a lake"])
    assert (first.headers["x-tollgate-cache"], second.headers["x-tollgate-cache"]) == ("miss", "hit")
    assert [d.embedding for d in second.parse().data] == [d.embedding for d in first.parse().data]
    bypass = embeddings.create(
        model="gpt-4o-mini", input=["a sea", "a lake"], extra_headers={"x-tollgate-cache": "bypass"}
    )
    assert bypass.headers["x-tollgate-cache"] == "bypass"
    assert_savings(proxy, 3, 0, [1])


def test_anthropic_messages_in_both_shapes(proxy):
    client = anthropic_client(proxy)
    # Sent as an extra member: recent SDKs no longer take `temperature` as an argument.
    pinned = {"temperature": 0}
    first = client.messages.with_raw_response.create(
        model="claude-sonnet-5", max_tokens=200, messages=MESSAGES, extra_body=pinned
    )
    assert first.headers["x-tollgate-cache"] == "miss"
    whole = first.parse()
    with client.messages.stream(
        model="claude-sonnet-5", max_tokens=200, messages=MESSAGES, extra_body=pinned
    ) as stream:
        assert stream.response.headers["x-tollgate-cache"] == "hit"
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens
    bypass = client.messages.with_raw_response.create(
        model="claude-sonnet-5",
        max_tokens=200,
        messages=MESSAGES,
        extra_body=pinned,
        extra_headers={"cache-control": "no-store"},
    )
    assert bypass.headers["x-tollgate-cache"] == "bypass"
    assert_savings(proxy, 3, 0, [1])
