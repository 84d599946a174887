"""The real OpenAI Python SDK on the Responses API through twinroute to an `api: openai`
provider that streams exactly as OpenAI documents (typed events, `response.completed`, no
`data: [DONE]`).

    python3 tests/sdk/responses_sdk.py BASE_URL

Prints `ok`, or fails with an assertion naming the scenario.
"""
import sys

import openai

base = sys.argv[1]
oai = openai.OpenAI(base_url=base + "/v1", api_key="placeholder", max_retries=0)

def whole():
    r = oai.responses.create(model="gpt-resp", input="Hello")
    assert r.status == "completed", r
    assert r.output_text == "hello from oa", r.output_text
    assert r.usage.output_tokens == 5, r.usage

def helper_stream():
    with oai.responses.stream(model="gpt-resp", input="Hello") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == "tok0 tok1 tok2 tok3 tok4 ", deltas
    assert final.status == "completed" and final.output_text == "".join(deltas), final
    assert final.usage.output_tokens == 5, final.usage

def raw_stream():
    events = list(oai.responses.create(model="gpt-resp", input="Hello", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    seq = [e.sequence_number for e in events]
    assert seq == sorted(seq) and len(set(seq)) == len(seq), seq

for scenario in (whole, helper_stream, raw_stream):
    try:
        scenario()
    except Exception as e:  # name the scenario that failed
        raise SystemExit(f"{scenario.__name__}: {type(e).__name__}: {e}")
print("ok")
