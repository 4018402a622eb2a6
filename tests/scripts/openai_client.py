"""Drives a running `torchless serve` with the official `openai` Python client.

Usage: openai_client.py BASE_URL API_KEY. Exits non-zero (an assertion) on any mismatch.
Covers chat and completions, streaming and not, stop sequences, usage, logprobs and an
error case, as the serving issue's acceptance asks.
"""
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)

models = client.models.list()
model = models.data[0].id

# Chat, whole.
msgs = [{"role": "user", "content": "Name a colour."}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
whole = r.choices[0].message.content
assert r.choices[0].message.role == "assistant"
assert r.choices[0].finish_reason in ("stop", "length")
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
assert 0 < r.usage.completion_tokens <= 12

# Chat, streamed: the same text (greedy), usage in the last chunk.
chunks = list(client.chat.completions.create(
    model=model, messages=msgs, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True}))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == whole, (text, whole)
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason

# Completions with a stop sequence, whole and streamed.
prompt = "1, 2, 3, 4, 5, 6,"
full = client.completions.create(model=model, prompt=prompt, max_tokens=20, temperature=0,
                                 extra_body={"ignore_eos": True}).choices[0].text
stop = full[6:9]
assert len(stop) == 3, full
c = client.completions.create(model=model, prompt=prompt, max_tokens=20, temperature=0, stop=[stop],
                              extra_body={"ignore_eos": True})
assert c.choices[0].finish_reason == "stop"
assert c.choices[0].text == full[:full.index(stop)], (c.choices[0].text, full, stop)
s = "".join(x.choices[0].text for x in client.completions.create(
    model=model, prompt=prompt, max_tokens=20, temperature=0, stop=stop, stream=True,
    extra_body={"ignore_eos": True}))
assert s == c.choices[0].text, (s, c.choices[0].text)

# Logprobs.
c = client.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0, logprobs=2,
                              extra_body={"ignore_eos": True})
lp = c.choices[0].logprobs
assert len(lp.tokens) == 5 and len(lp.token_logprobs) == 5 and len(lp.top_logprobs) == 5
assert "".join(lp.tokens) == c.choices[0].text
assert all(max(t.values()) == l for t, l in zip(lp.top_logprobs, lp.token_logprobs))
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0,
                                   logprobs=True, top_logprobs=2)
content = r.choices[0].logprobs.content
assert content and all(len(t.top_logprobs) == 2 for t in content)
assert all(t.logprob <= 0 for t in content)

# Errors.
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    raise SystemExit("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
try:
    client.chat.completions.create(model=model, messages=msgs, temperature=9)
    raise SystemExit("temperature 9 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "temperature" in str(e)
try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401
print("openai client: all checks passed")
