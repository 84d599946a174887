"""Drives twinroute's stream recovery with the real OpenAI and Anthropic Python SDKs.

    python3 tests/sdk/recovery_sdk.py BASE_URL

tests/streams.rs sets the providers up: each model's first provider breaks its stream part-way
and its twin completes it from the prefill. The SDKs' own stream parsers and accumulators judge
whether the spliced stream is one well-formed answer; a stream nothing could complete must
surface as the SDK's error. Prints `ok` or fails naming the scenario.
"""
import sys

import anthropic
import openai

base = sys.argv[1]
ant = anthropic.Anthropic(base_url=base, api_key="placeholder", max_retries=0)
oai = openai.OpenAI(base_url=base + "/v1", api_key="placeholder", max_retries=0)
FULL = "".join(f"t{i} " for i in range(60))
ASK = [{"role": "user", "content": "count to 59"}]


def anthropic_completed():
    with ant.messages.stream(model="recover-claude", max_tokens=500, messages=ASK) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == FULL, text
    assert final.id == "msg_p", final.id
    assert len(final.content) == 1 and final.content[0].text == FULL, final.content
    assert final.stop_reason == "end_turn", final.stop_reason


def openai_completed():
    stream = oai.chat.completions.create(model="recover-gpt", messages=ASK, stream=True)
    ids, text, finish = set(), "", None
    for chunk in stream:
        ids.add(chunk.id)
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == FULL, text
    assert ids == {"chatcmpl-p"}, ids
    assert finish == "stop", finish


def anthropic_not_completed():
    try:
        with ant.messages.stream(model="recover-refused", max_tokens=500, messages=ASK) as s:
            "".join(s.text_stream)
    except anthropic.APIError as e:
        assert "upstream provider p ended the stream unexpectedly" in str(e), e
        assert "prefill" not in str(e), e
        return
    raise AssertionError("a stream nothing completed did not raise")


for scenario in (anthropic_completed, openai_completed, anthropic_not_completed):
    try:
        scenario()
    except Exception as e:
        raise SystemExit(f"{scenario.__name__}: {type(e).__name__}: {e}")
print("ok")
