"""`kgpt2 serve` end to end: a server subprocess on 127.0.0.1, the official `openai` package as the client."""

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from kgpt2.serve import chat_prompt

pytestmark = [pytest.mark.backend_neutral, pytest.mark.slow]  # each server loads and compiles the tiny model (seconds)

PROMPTS = ["The assert statement", "if x:", "Lambda forms", "The with statement is used", "A class", "import",
           "The for statement", "Raise an exception"]


@pytest.fixture(scope="module")
def server(start_server):
    return start_server("--slots", "4", "--max-queue", "40")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def generator(tiny_run):
    """The reference: kgpt2's single-request Generator on the same checkpoint (checked against KerasHub)."""
    from kgpt2.generate import Generator
    from kgpt2.run import load_model

    model, tokenizer, cfg = load_model(tiny_run, "latest")
    return Generator(model, tokenizer), tokenizer, cfg


def greedy_text(generator, prompt, n):
    from kgpt2.generate import Settings

    gen, _, _ = generator
    return gen.generate(prompt, Settings(sampler="greedy", max_new_tokens=n))


def complete(client, prompt, n, **kw):
    return client.completions.create(model="tiny", prompt=prompt, max_tokens=n, temperature=0, **kw)


def test_models_health_and_completions(client, server, generator):
    _, tokenizer, _ = generator
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server[1] + "/health").json()["status"] == "ok"
    out = complete(client, PROMPTS[0], 12)
    assert out.choices[0].text == greedy_text(generator, PROMPTS[0], 12)
    assert out.usage.prompt_tokens == len(tokenizer.encode(PROMPTS[0]))
    assert out.usage.completion_tokens <= 12
    assert out.choices[0].finish_reason == ("length" if out.usage.completion_tokens == 12 else "stop")
    streamed = list(complete(client, PROMPTS[0], 12, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text
    assert streamed[-1].choices[0].finish_reason == out.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in streamed[:-1])


def test_max_tokens_and_stop_strings(client, generator):
    assert complete(client, PROMPTS[1], 3).usage.completion_tokens <= 3
    free = greedy_text(generator, PROMPTS[1], 20)
    assert len(free) > 8
    stop = free[4:7]
    out = complete(client, PROMPTS[1], 20, stop=[stop, "never seen"])
    assert out.choices[0].text == free[:free.find(stop)] and out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in complete(client, PROMPTS[1], 20, stop=stop, stream=True))
    assert streamed == out.choices[0].text


def test_chat_completions_use_the_run_template(client, generator):
    _, _, cfg = generator
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is assert?"}]
    expected = greedy_text(generator, chat_prompt(messages, cfg.generate.template), 10)
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert out.choices[0].message.content == expected and out.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


def test_chat_content_parts_are_the_text_they_join(client, generator):
    """Content as a list of parts (the `openai` client's typed form, LangChain, many UIs): the text parts
    joined by newlines, as vLLM does; a null assistant content is an empty turn (OpenAI allows it there)."""
    _, _, cfg = generator
    parts = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
             {"role": "user", "content": "Earlier question."}, {"role": "assistant", "content": None},
             {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "assert?"}]}]
    texts = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Earlier question."},
             {"role": "assistant", "content": ""}, {"role": "user", "content": "What is\nassert?"}]
    expected = greedy_text(generator, chat_prompt(texts, cfg.generate.template), 10)
    out = client.chat.completions.create(model="tiny", messages=parts, max_tokens=10, temperature=0)
    assert out.choices[0].message.content == expected
    same = client.chat.completions.create(model="tiny", messages=texts, max_tokens=10, temperature=0)
    assert same.choices[0].message.content == expected and same.usage.prompt_tokens == out.usage.prompt_tokens


@pytest.mark.parametrize("part, kind", [({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                                         "image_url"),
                                        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                                         "input_audio")])
def test_a_non_text_content_part_is_a_400_naming_its_type(client, part, kind):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe this."}, part]}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=3)
    error = e.value.body
    assert error["message"] == (f"messages[0].content[1] is a part of type '{kind}'; this model reads text only "
                                "(parts of type 'text')")
    assert error["param"] == "messages.0.content.1" and error["type"] == "invalid_request_error"


def test_chat_completions_of_a_chat_run_prompt_with_the_chat_templates_ids(start_server, generator, tiny_run,
                                                                           tmp_path):
    """A run trained on `messages` data: the conversation in the ids `kgpt2 train` trained on (end-of-text ids)."""
    import json
    import shutil

    from kgpt2.generate import Settings

    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["generate"]["template"] = "chat"
    (run / "config.json").write_text(json.dumps(cfg))
    proc, url = start_server(run=run)
    chat = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "developer", "content": "Brief."}, {"role": "user", "content": "The assert statement"}]
    out = chat.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    gen, tokenizer, _ = generator
    turns = [dict(m, role="system") if m["role"] == "developer" else m for m in messages]
    want = gen.generate(turns, Settings(sampler="greedy", max_new_tokens=8, template="chat"))
    assert out.choices[0].message.content == want
    from kgpt2.generation.templates import prompt_ids

    ids = prompt_ids(tokenizer, turns)
    assert out.usage.prompt_tokens == len(ids) < 56 and ids.count(tokenizer.eos_id) == 2  # one per turn
    proc.terminate()
    proc.wait(30)


def test_bad_requests_are_4xx_in_openai_shape(client, server):
    with pytest.raises(openai.BadRequestError):
        complete(client, "x", 5, extra_body={"temperature": 7})
    with pytest.raises(openai.BadRequestError, match="context"):
        complete(client, "x", 10_000)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[], max_tokens=3)
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    r = httpx.post(server[1] + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    # a wrong path or method: OpenAI's shape too (FastAPI's own is {"detail": "Not Found"}), naming the routes
    for r in (httpx.post(server[1] + "/v1/completion", json={}), httpx.get(server[1] + "/v1/chat/completions")):
        assert r.status_code in (404, 405) and "POST /v1/chat/completions" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        complete(client, "x", 2, stream_options={"include_usage": True})


def test_stream_options_include_usage_sends_openais_usage_chunk(client):
    messages = [{"role": "user", "content": "What is assert?"}]
    kw = dict(model="tiny", messages=messages, max_tokens=6, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # one more chunk, before [DONE]
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == whole.choices[0].message.content


def test_32_concurrent_clients_equal_alone(client):
    cases = [(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), 6 + i % 9, i % 3 == 0) for i in range(32)]

    def send(case):
        prompt, n, stream = case
        if stream:
            return "".join(c.choices[0].text for c in complete(client, prompt, n, stream=True))
        return complete(client, prompt, n).choices[0].text

    alone = [send(case) for case in cases]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(send, cases))  # an exception here is an error: none allowed
    assert together == alone


def test_client_leaving_mid_stream_frees_its_slot(client, server):
    stream = complete(client, PROMPTS[2], 40, stream=True)
    next(iter(stream))
    stream.close()
    for _ in range(100):  # bounded: 20 s
        if httpx.get(server[1] + "/health").json()["busy"] == 0:
            break
        time.sleep(0.2)
    assert httpx.get(server[1] + "/health").json()["busy"] == 0


def test_api_key_full_queue_and_sigterm(start_server):
    proc, url = start_server("--slots", "1", "--max-queue", "0", "--api-key", "secret")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(url + "/v1/models").status_code == 401
    good = openai.OpenAI(base_url=url + "/v1", api_key="secret", max_retries=0, timeout=120)

    def send(i):
        try:
            return complete(good, PROMPTS[i % len(PROMPTS)], 40).choices[0].text
        except openai.RateLimitError:
            return 429

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, range(16)))
    assert 429 in results and any(r != 429 for r in results)  # a full queue answers 429, the rest succeed
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0  # a clean shutdown: uvicorn drained, the engine closed


def test_busy_port_and_wrong_folder_are_one_line_and_status_2(tmp_path, kgpt2_cli):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for run, message in [(tmp_path, f"cannot listen on 127.0.0.1:{port}"), (tmp_path / "missing", None)]:
            done = kgpt2_cli("serve", "--run", run, "--port", port, cwd=tmp_path)
            assert done.returncode == 2 and "Traceback" not in done.stderr
            assert done.stderr.strip().splitlines()[-1].startswith("kgpt2: error:")
            assert message is None or message in done.stderr
    done = kgpt2_cli("serve", "--run", tmp_path, "--host", "999.1.1.1", "--port", 8000, cwd=tmp_path)
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and line.startswith("kgpt2: error: cannot listen on 999.1.1.1:8000 (")
    assert "Unknown error" not in line, line  # it said "(Unknown error -2)" for a name that does not resolve


def test_n_choices_and_several_prompts_equal_their_requests_alone(client, generator):
    # Greedy: every choice is the greedy text of its prompt; choice i * n + j is prompt i's j-th.
    out = client.completions.create(model="tiny", prompt=PROMPTS[:2], n=2, max_tokens=8, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert [c.text for c in out.choices] == [greedy_text(generator, p, 8) for p in PROMPTS[:2] for _ in range(2)]
    # Sampled with a seed: choice j is the request alone with seed + j (different, reproducible).
    sampled = dict(model="tiny", prompt=PROMPTS[3], max_tokens=12, temperature=1.0, top_p=1.0, seed=7)
    together = [c.text for c in client.completions.create(n=3, **sampled).choices]
    alone = [client.completions.create(**(sampled | {"seed": 7 + j})).choices[0].text for j in range(3)]
    assert together == alone and len(set(together)) > 1
    # Without a seed (OpenAI's semantics): the choices differ, and so does the same request sent again.
    unseeded = sampled | {"seed": None, "max_tokens": 16}
    choices = [c.text for c in client.completions.create(n=3, **unseeded).choices]
    again = client.completions.create(**unseeded).choices[0].text
    assert len(set(choices)) == 3 and again not in choices
    # Streamed: the chunks of each index add up to that choice; usage counts the prompt once.
    messages = [{"role": "user", "content": "What is assert?"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, n=2, max_tokens=6, seed=3, temperature=1.0)
    texts = {0: "", 1: ""}
    for chunk in client.chat.completions.create(model="tiny", messages=messages, n=2, max_tokens=6, seed=3,
                                                temperature=1.0, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens < whole.usage.total_tokens


def test_the_port_check_binds_in_the_hosts_address_family():
    """`kgpt2 serve --host ::1` was refused ("Address family for hostname not supported"): its port check bound
    IPv4 only. serve and the demo now share one check (kgpt2.serving.ports)."""
    from kgpt2.errors import UserError
    from kgpt2.serving.ports import check_port

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("::1 is not configured here")
        port = probe.getsockname()[1]
    check_port("::1", port)  # free: no error
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as held:
        busy = held.getsockname()[1]
        with pytest.raises(UserError, match=rf"cannot listen on ::1:{busy} \(port {busy} is already in use: x\)"):
            check_port("::1", busy, "x")
