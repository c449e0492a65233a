"""`logprobs` and `echo` on `kgpt2 serve` against an independent oracle: the run exported to Hugging Face
format and scored by `transformers`' GPT2LMHeadModel (float32), through the official `openai` client."""

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

pytestmark = [pytest.mark.backend, pytest.mark.slow]  # a server loads and compiles the tiny model; the run is exported once

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-3
PROMPT = "The with statement is used to wrap"


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kgpt2.cli", "serve", "--run", str(tiny_run), "--port",
                                 str(port), "--slots", "4"], cwd=log.parent, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # bounded: 120 s to load and compile
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.kill()
        proc.wait(30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(loaded):
    return loaded[1]


@pytest.fixture(scope="module")
def oracle(tiny_run, tmp_path_factory):
    """ids -> float32 log-softmax [len(ids), vocabulary] from transformers on the run's HF export."""
    import torch
    import transformers

    from kgpt2.export import export_run

    hf = transformers.GPT2LMHeadModel.from_pretrained(
        export_run(tiny_run, "hf", tmp_path_factory.mktemp("hf") / "tiny"), torch_dtype=torch.float32).eval()

    def log_softmax(ids):
        with torch.no_grad():
            return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1).numpy()
    return log_softmax


def text_of(tokenizer, token):
    from kgpt2.generation.logprobs import token_text

    return token_text(tokenizer, token)


def test_greedy_tokens_are_the_top_one_and_their_logprobs_match_transformers(client, tokenizer, oracle):
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=5)
    lp, ids = out.choices[0].logprobs, tokenizer.encode(PROMPT)
    assert 1 <= len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    for j, (token, logprob, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)):
        assert max(top, key=top.get) == token and len(top) == 5  # greedy: the top-1 is the generated token
        expected = oracle(ids)[-1]  # teacher-forced on transformers' own greedy choice
        best = int(np.argmax(expected))
        assert text_of(tokenizer, best) == token
        assert abs(logprob - expected[best]) < ATOL
        top5 = np.sort(expected)[::-1][:5]
        np.testing.assert_allclose(sorted(top.values(), reverse=True), top5, atol=ATOL)
        ids = ids + [best]
    text = out.choices[0].text
    assert [text[o:o + len(t)] for o, t in zip(lp.text_offset, lp.tokens) if t != "<|endoftext|>"] == \
        [t for t in lp.tokens if t != "<|endoftext|>"]


def test_echo_without_generation_scores_the_prompt(client, tokenizer, oracle):
    ids = tokenizer.encode(PROMPT)
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    choice, expected = out.choices[0], oracle(ids)
    assert choice.text == PROMPT and choice.finish_reason == "length" and out.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.tokens == [text_of(tokenizer, t) for t in ids] and lp.text_offset[0] == 0
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    np.testing.assert_allclose(lp.token_logprobs[1:], [expected[p - 1, ids[p]] for p in range(1, len(ids))], atol=ATOL)
    for p in range(1, len(ids)):  # the top-1 and the prompt's own token (OpenAI adds it: up to logprobs + 1)
        assert max(lp.top_logprobs[p].values()) == pytest.approx(expected[p - 1].max(), abs=ATOL)
        assert lp.top_logprobs[p][lp.tokens[p]] == pytest.approx(lp.token_logprobs[p])


def test_stop_strings_cut_the_lists_and_echo_streams_the_prompt_first(client):
    def sampled(seed, whole=False, **kw):  # the tiny model's greedy text is one letter repeated: sample, seeded
        out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=seed, **kw)
        return out if whole else out.choices[0]

    # A seed whose text has a stop string that first shows up a few characters in.
    seed, free = next((seed, free) for seed in range(50) for free in [sampled(seed).text]
                      if len(free) > 8 and free.find(free[4:7]) >= 2)
    whole = sampled(seed, whole=True, logprobs=0, stop=free[4:7])
    out = whole.choices[0]
    assert out.text == free[:free.find(free[4:7])] and out.finish_reason == "stop"
    assert whole.usage.completion_tokens == len(out.logprobs.tokens)  # the tokens of the text, none past the cut
    assert all(offset < len(out.text) for offset in out.logprobs.text_offset)  # tokens past the cut left out
    assert "".join(out.logprobs.tokens).startswith(out.text)
    assert all(len(top) == 1 for top in out.logprobs.top_logprobs)  # logprobs 0: the chosen token alone
    streamed = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, echo=True,
                                         stream=True)
    chunks = [c.choices[0].text for c in streamed]
    assert chunks[0] == PROMPT and "".join(chunks) == PROMPT + \
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0).choices[0].text


def test_lm_eval_loglikelihood_request(server, tokenizer, oracle):
    """The body lm-evaluation-harness's local-completions sends for loglikelihood, parsed as it parses it."""
    context, continuation = tokenizer.encode("The with statement"), tokenizer.encode(" is used to wrap")
    ids = context + continuation
    payload = {"model": "tiny", "prompt": [ids], "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234,
               "echo": True}
    choice = httpx.post(server + "/v1/completions", json=payload, timeout=120).json()["choices"][0]
    token_logprobs = choice["logprobs"]["token_logprobs"]
    assert len(token_logprobs) == len(ids) + 1  # the prompt, then the one generated token
    ctxlen = len(context)
    loglikelihood = sum(token_logprobs[ctxlen:-1])  # lm_eval.models.openai_completions.parse_logprobs
    is_greedy = all(t == max(top.values()) for t, top in
                    zip(token_logprobs[ctxlen:-1], choice["logprobs"]["top_logprobs"][ctxlen:-1]))
    expected = oracle(ids)
    assert loglikelihood == pytest.approx(sum(expected[p - 1, ids[p]] for p in range(ctxlen, len(ids))), abs=ATOL)
    assert is_greedy == all(expected[p - 1].argmax() == ids[p] for p in range(ctxlen, len(ids)))


def test_bad_logprobs_requests_are_400(client):
    def refused(chat=False, **kw):
        with pytest.raises(openai.BadRequestError) as e:
            if chat:
                client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2, **kw)
            else:
                client.completions.create(model="tiny", **({"prompt": "x", "max_tokens": 2} | kw))
        return e.value.body
    assert refused(logprobs=6)["param"] == "logprobs"
    assert refused(logprobs=-1)["param"] == "logprobs"
    assert refused(logprobs=1, stream=True)["param"] == "stream"
    assert refused(max_tokens=0)["param"] == "max_tokens"  # without echo: nothing to do
    assert "vocabulary" in refused(prompt=[1, 10**6])["message"]
    assert refused(chat=True, logprobs=True, top_logprobs=6)["param"] == "top_logprobs"
    assert refused(chat=True, top_logprobs=2)["param"] == "top_logprobs"
    assert refused(chat=True, logprobs=True, stream=True)["param"] == "stream"


def test_chat_logprobs(client):
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "What is assert?"}],
                                         max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert 1 <= len(content) <= 6
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob) and entry.logprob <= 0
    assert "".join(e.token for e in content) == out.choices[0].message.content


def test_logprobs_beside_plain_requests_equal_alone(client):
    def plain(i):  # greedy and seeded sampling, prompts of several lengths
        sampling = {"temperature": 1.0, "seed": i} if i % 2 else {"temperature": 0}
        return client.completions.create(model="tiny", prompt=PROMPT[: 5 + i], max_tokens=6 + i,
                                         **sampling).choices[0].text

    def scored(_=None):
        return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3,
                                         echo=True).choices[0]

    alone_texts, alone = [plain(i) for i in range(6)], scored()
    with ThreadPoolExecutor(8) as pool:
        texts = [pool.submit(plain, i) for i in range(6)]
        together = pool.submit(scored)
        assert [t.result() for t in texts] == alone_texts
        together = together.result()
    assert together.text == alone.text and together.logprobs.tokens == alone.logprobs.tokens
    assert together.logprobs.top_logprobs[1:] == [pytest.approx(t, abs=1e-5) for t in alone.logprobs.top_logprobs[1:]]
    np.testing.assert_allclose(together.logprobs.token_logprobs[1:], alone.logprobs.token_logprobs[1:], atol=1e-5)


def test_plain_requests_run_the_decode_loop_without_scores(loaded):
    """Log-probabilities cost plain requests nothing: their launches use the loop that computes none."""
    from kgpt2.generation.engine import Engine, Sampling

    model, tokenizer, _ = loaded
    engine = Engine(model, tokenizer, slots=2, steps_per_launch=4)
    ids = tokenizer.encode(PROMPT)
    plain = engine.submit(ids, Sampling(), len(ids) + 6)
    while not plain.finished:
        engine.step()
    assert engine.compiles == 2 and plain.scores == []  # one prefill, the plain greedy loop
    scored = engine.submit(ids, Sampling(), len(ids) + 6, logprobs=2)
    while not scored.finished:
        engine.step()
    assert engine.compiles == 3 and scored.tokens == plain.tokens  # + the scoring loop
    assert len(scored.scores) == len(scored.tokens) + scored.ended_on_eos
    assert all(len(top) == 2 and top[0][0] == t for t, (_, top) in zip(scored.tokens, scored.scores))
