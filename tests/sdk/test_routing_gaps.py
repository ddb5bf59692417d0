"""Cascades through the official OpenAI SDK beyond test_sdks.py: structured outputs parsed into
a model class when the cheap answer breaks the schema, a content-filtered answer, and the usage
chunk of a replayed stream."""

import pydantic
from test_sdks import MESSAGES, openai_client


class Place(pydantic.BaseModel):
    city: str
    people: int


def test_structured_output_off_its_schema_escalates_and_parses(proxy):
    client = openai_client(proxy)
    cases = [
        ({}, "sim/gpt-4o-mini=accepted", "gpt-4o-mini"),
        (
            {"x-sim-fault": "invalid-json=schema@gpt-4o-mini"},
            "sim/gpt-4o-mini=rejected:json, sim/gpt-4o=served",
            "gpt-4o",
        ),
    ]
    for headers, route, model in cases:
        raw = client.chat.completions.with_raw_response.parse(
            model="tollgate/cheap-first", messages=MESSAGES, response_format=Place, extra_headers=headers
        )
        assert raw.headers["x-tollgate-route"] == route
        resp = raw.parse()
        assert resp.model == model
        assert isinstance(resp.choices[0].message.parsed, Place)


def test_a_filtered_answer_escalates_and_replayed_streams_keep_the_usage_asked_for(proxy):
    client = openai_client(proxy)
    for headers, model in [({"x-sim-fault": "content-filter@gpt-4o-mini"}, "gpt-4o"), ({}, "gpt-4o-mini")]:
        chunks = list(
            client.chat.completions.create(
                model="tollgate/cheap-first",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            )
        )
        assert {c.model for c in chunks} == {model}
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        assert [c.usage is not None for c in chunks].count(True) == 1
        assert chunks[-1].usage is not None and not chunks[-1].choices
    recs = proxy.records(2)
    assert [(r["model"], r["escalations"]) for r in recs] == [("gpt-4o", 1), ("gpt-4o-mini", 0)]
    # The accepted answer's usage chunk is the request's whole usage: one call.
    assert recs[1]["output_tokens"] == chunks[-1].usage.completion_tokens
    assert recs[1]["input_tokens"] == chunks[-1].usage.prompt_tokens
