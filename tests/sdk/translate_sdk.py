"""Drives twinroute with the real OpenAI and Anthropic Python SDKs through every scenario.

    python3 tests/sdk/translate_sdk.py BASE_URL

tests/sdk.rs sets the mock providers up (one model per scenario, each with its scripted answer)
and runs this once (importing both SDKs takes seconds); it prints `ok` or fails with an
assertion naming the scenario. The SDKs' own parsers (typed objects, stream accumulators, typed
exceptions) are the judge of whether a translated answer is what the client's API returns.
"""
import sys

import anthropic
import openai

base = sys.argv[1]
ant = anthropic.Anthropic(base_url=base, api_key="placeholder", max_retries=0)
oai = openai.OpenAI(base_url=base + "/v1", api_key="placeholder", max_retries=0)

WEATHER_TOOL_ANTHROPIC = {
    "name": "get_current_weather",
    "description": "Weather now",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}

def anthropic_plain():
    m = ant.messages.create(model="claude-sonnet-4-5", max_tokens=64, system="Be brief.",
                            messages=[{"role": "user", "content": "Hello"}])
    assert m.type == "message" and m.role == "assistant", m
    assert m.content[0].type == "text" and m.content[0].text == "hello from oa", m.content
    assert m.stop_reason == "end_turn", m.stop_reason
    assert m.usage.input_tokens == 12 and m.usage.output_tokens == 5, m.usage
def anthropic_stream():
    with ant.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                             messages=[{"role": "user", "content": "Hello"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 tok4 ", repr(text)
    assert final.content[0].text == text and final.stop_reason == "end_turn", final
    assert final.usage.output_tokens == 5, final.usage
def anthropic_tools():
    m = ant.messages.create(
        model="claude-tools", max_tokens=256, tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[
            {"role": "user", "content": "Weather in Rome?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_01", "name": "get_current_weather", "input": {"location": "Rome"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "21C"},
                {"type": "text", "text": "And Boston and Paris?"}]},
        ])
    assert m.stop_reason == "tool_use", m.stop_reason
    uses = [b for b in m.content if b.type == "tool_use"]
    assert [u.input for u in uses] == [{"location": "Boston, MA"}, {"location": "Paris, France"}], uses
    assert uses[1].id == "call_def456", uses
def anthropic_error():
    try:
        ant.messages.create(model="claude-broken", max_tokens=8,
                            messages=[{"role": "user", "content": "Hello"}])
        raise AssertionError("no error raised")
    except anthropic.BadRequestError as e:
        assert e.status_code == 400 and "string too long" in e.message, e
def anthropic_models():
    ids = [m.id for m in ant.models.list()]
    assert "claude-sonnet-4-5" in ids and "gpt-4o" in ids, ids
def openai_plain():
    r = oai.chat.completions.create(model="gpt-4o", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert r.object == "chat.completion", r
    assert r.choices[0].message.content == "hello from an", r.choices[0]
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 12 and r.usage.completion_tokens == 5, r.usage
def openai_stream_usage():
    stream = oai.chat.completions.create(
        model="gpt-stream-tools", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Weather in SF?"}], tools=[WEATHER_TOOL_OPENAI])
    text, args, finish, usage, call_id = "", "", None, None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text += c.delta.content
            for tc in c.delta.tool_calls or []:
                call_id = tc.id or call_id
                if tc.function and tc.function.arguments:
                    args += tc.function.arguments
            finish = c.finish_reason or finish
    assert text == "Okay, let's check the weather for San Francisco, CA:", repr(text)
    import json
    assert json.loads(args) == {"location": "San Francisco, CA", "unit": "fahrenheit"}, args
    assert call_id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6" and finish == "tool_calls", (call_id, finish)
    assert usage.prompt_tokens == 472 and usage.completion_tokens == 89, usage
def openai_tools():
    r = oai.chat.completions.create(
        model="gpt-tools", tools=[WEATHER_TOOL_OPENAI], parallel_tool_calls=True,
        messages=[{"role": "user", "content": "Weather in Boston and Paris?"}])
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0]
    assert [c.function.arguments for c in calls] == ['{"location":"Boston, MA"}', '{"location":"Paris, France"}'], calls
    assert calls[0].id == "call_abc123" and calls[0].type == "function", calls
def openai_models():
    ids = [m.id for m in oai.models.list()]
    assert ids[0] == "claude-sonnet-4-5" and "gpt-tools" in ids, ids
for scenario in [anthropic_plain, anthropic_stream, anthropic_tools, anthropic_error, anthropic_models, openai_plain, openai_stream_usage, openai_tools, openai_models]:
    try:
        scenario()
    except Exception as e:
        raise SystemExit(f"scenario {scenario.__name__}: {e!r}")
print("ok")
