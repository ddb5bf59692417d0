"""The official OpenAI and Anthropic Python SDKs, pointed at Tollgate by base URL only."""

import json

import anthropic
import openai
import pytest
from conftest import KEY

MESSAGES = [{"role": "user", "content": "Give me three facts about octopuses."}]


def openai_client(proxy):
    return openai.OpenAI(base_url=proxy.base + "/v1", api_key=KEY, max_retries=0)


def anthropic_client(proxy):
    return anthropic.Anthropic(base_url=proxy.base, api_key=KEY, max_retries=0)


def test_openai_chat(proxy):
    resp = openai_client(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-tollgate-feature": "facts"}
    )
    assert resp.choices[0].message.content
    rec = proxy.last_record(1)
    assert rec["input_tokens"] == resp.usage.prompt_tokens
    assert rec["output_tokens"] == resp.usage.completion_tokens
    assert (rec["team"], rec["project"], rec["env"], rec["feature"]) == ("platform", "sdk-tests", "ci", "facts")
    assert rec["usage_source"] == "reported"
    assert float(rec["cost_usd"]) > 0


def test_openai_stream_without_usage_is_still_metered(proxy):
    client = openai_client(proxy)
    headers = {"x-sim-output-tokens": "9"}
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers)
    chunks = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=headers)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.choices for c in chunks), "no usage-only chunk reaches a client that did not ask"
    rec = proxy.last_record(2)
    assert rec["stream"] is True
    assert rec["usage_source"] == "reported"
    assert rec["input_tokens"] == plain.usage.prompt_tokens
    assert rec["output_tokens"] == 9


def test_openai_stream_with_usage(proxy):
    chunks = list(
        openai_client(proxy).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    rec = proxy.last_record(1)
    assert (rec["input_tokens"], rec["output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)


def test_openai_responses_api(proxy):
    resp = openai_client(proxy).responses.create(model="gpt-4o-mini", input="Say hi")
    assert resp.output_text
    rec = proxy.last_record(1)
    assert (rec["input_tokens"], rec["output_tokens"]) == (resp.usage.input_tokens, resp.usage.output_tokens)


def test_openai_errors_are_raised_as_sdk_errors(proxy):
    with pytest.raises(openai.NotFoundError) as e:
        openai_client(proxy).chat.completions.create(model="gpt-99", messages=MESSAGES)
    assert "gpt-99" in str(e.value)
    bad = openai.OpenAI(base_url=proxy.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_anthropic_messages(proxy):
    resp = anthropic_client(proxy).messages.create(
        model="claude-sonnet-5", max_tokens=200, messages=MESSAGES
    )
    assert resp.content[0].text
    rec = proxy.last_record(1)
    u = resp.usage
    expected_input = u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
    assert rec["input_tokens"] == expected_input
    assert rec["output_tokens"] == u.output_tokens
    assert rec["provider"] == "sim"


def test_anthropic_stream_with_prompt_cache(proxy):
    client = anthropic_client(proxy)
    system = [{"type": "text", "text": "Policy manual. " * 500, "cache_control": {"type": "ephemeral"}}]
    finals = []
    for _ in range(2):
        with client.messages.stream(
            model="claude-sonnet-5", max_tokens=100, system=system, messages=MESSAGES
        ) as stream:
            text = "".join(stream.text_stream)
            assert text
            finals.append(stream.get_final_message())
    recs = proxy.records(2)
    assert finals[0].usage.cache_creation_input_tokens > 0
    assert finals[1].usage.cache_read_input_tokens > 0
    for rec, msg in zip(recs, finals):
        u = msg.usage
        assert rec["cache_write_tokens"] == (u.cache_creation_input_tokens or 0)
        assert rec["cached_input_tokens"] == (u.cache_read_input_tokens or 0)
        assert rec["output_tokens"] == u.output_tokens
        assert rec["stream"] is True


def test_anthropic_errors_are_raised_as_sdk_errors(proxy):
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(proxy).messages.create(model="claude-nope", max_tokens=5, messages=MESSAGES)


def test_openai_cascade_replays_accepted_answers_and_escalates_rejected_ones(proxy):
    client = openai_client(proxy)
    accepted = client.chat.completions.with_raw_response.create(model="tollgate/cheap-first", messages=MESSAGES)
    assert accepted.headers["x-tollgate-route"] == "sim/gpt-4o-mini=accepted"
    assert accepted.parse().model == "gpt-4o-mini"

    # JSON mode: the cheap model's broken JSON is rejected, the strong model's is served.
    fault = {"x-sim-fault": "invalid-json@gpt-4o-mini"}
    raw = client.chat.completions.with_raw_response.create(
        model="tollgate/cheap-first", messages=MESSAGES, response_format={"type": "json_object"}, extra_headers=fault
    )
    assert raw.headers["x-tollgate-route"] == "sim/gpt-4o-mini=rejected:json, sim/gpt-4o=served"
    resp = raw.parse()
    assert resp.model == "gpt-4o"
    assert isinstance(json.loads(resp.choices[0].message.content), dict)

    # Streams: a held answer is replayed as a stream, an escalation streams through.
    for fault, model in [({}, "gpt-4o-mini"), ({"x-sim-fault": "truncate@gpt-4o-mini"}, "gpt-4o")]:
        chunks = list(
            client.chat.completions.create(
                model="tollgate/cheap-first", messages=MESSAGES, stream=True, extra_headers=fault
            )
        )
        assert {c.model for c in chunks} == {model}
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "stop"
    recs = proxy.records(4)
    assert [r["escalations"] for r in recs] == [0, 1, 0, 1]
    assert all(float(r["counterfactual_cost_usd"]) > 0 for r in recs)


def test_anthropic_cascade_in_both_shapes(proxy):
    client = anthropic_client(proxy)
    resp = client.messages.create(model="tollgate/claude-cheap-first", max_tokens=200, messages=MESSAGES)
    assert resp.model == "claude-haiku-4-5" and resp.stop_reason == "end_turn"
    with client.messages.stream(
        model="tollgate/claude-cheap-first",
        max_tokens=200,
        messages=MESSAGES,
        extra_headers={"x-sim-fault": "truncate@claude-haiku-4-5"},
    ) as stream:
        assert "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.model == "claude-sonnet-5" and final.stop_reason == "end_turn"
    recs = proxy.records(2)
    assert [(r["policy"], r["attempts"], r["escalations"]) for r in recs] == [
        ("claude-cheap-first", 1, 0),
        ("claude-cheap-first", 2, 1),
    ]
