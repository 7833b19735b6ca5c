#!/usr/bin/env python3
"""`mmloop serve` through the official `openai` Python client, as users of vLLM call it.

    python3 tools/check_serve.py [--mmloop target/debug/mmloop]

Starts `mmloop serve` on the tiny Qwen2-VL checkpoint of the fixtures (with its LoRA adapter and
an API key) and checks, with openai==3.60.0 in a venv this script makes ($MMLOOP_SERVE_VENV,
default tools/.venv-serve):

- models.list: the base model and the adapter (parent = base);
- a greedy image question: the answer and token log-probabilities of transformers' reference
  (tests/fixtures/vlm/qwen2_vl/reference.json), `top_logprobs` alternatives, usage, and the
  `mmloop` extension (confidence in [0, 1], flags) read through `model_extra`;
- streaming with include_usage: the same text and log-probabilities, then a usage chunk;
- n = 3 with a seed: three choices, the same on a second call;
- the adapter by name; errors as the client's exception classes (NotFoundError,
  BadRequestError, AuthenticationError); the server serves on after each;
- gateway mode: a second `mmloop serve` without a model, whose experiment's two arms are the
  first server's base model and adapter (`--arm NAME=URL#MODEL`): through it, each user gets
  their arm's answer (equal to asking that server directly), with the `mmloop` extension, whole
  and streamed; `/v1/feedback` takes its response ids, and `mmloop ab status` counts them.

Exits non-zero on the first failed check. CI runs it (.ci/run).
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "vlm")
OPENAI = "openai==3.60.0"
QUESTION = "What color is the main object? Answer briefly."


def ensure_venv():
    venv = os.environ.get("MMLOOP_SERVE_VENV", os.path.join(ROOT, "tools", ".venv-serve"))
    py = os.path.join(venv, "bin", "python3")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", OPENAI], check=True)
    return py


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_url(name):
    with open(os.path.join(FIXTURES, "images", name), "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def question(image, text=QUESTION):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url(image)}},
                                         {"type": "text", "text": text}]}]


def checks(url):
    import openai

    client = openai.OpenAI(base_url=url, api_key="sk-check")
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny", "lora"], models
    assert models[1].model_extra["parent"] == "tiny"

    with open(os.path.join(FIXTURES, "qwen2_vl", "reference.json")) as f:
        ref = json.load(f)
    case = next(c for c in ref["cases"] if c["prompt"] == QUESTION and (c["image"] or "").endswith("img0.png"))
    args = dict(model="tiny", messages=question("img0.png"), max_tokens=8, temperature=0,
                logprobs=True, top_logprobs=3, extra_body={"repetition_penalty": 1.0})
    r = client.chat.completions.create(**args)
    c = r.choices[0]
    assert c.message.content == case["text"], (c.message.content, case["text"])
    got = [t.logprob for t in c.logprobs.content]
    want = [s["logprob"] for s in case["steps"]]
    assert len(got) == len(want) and all(abs(a - b) < 1e-4 for a, b in zip(got, want)), (got, want)
    assert all(len(t.top_logprobs) == 3 for t in c.logprobs.content)
    assert c.finish_reason == "length"
    assert r.usage.prompt_tokens == case["num_input_tokens"] and r.usage.completion_tokens == 8, r.usage
    extra = c.model_extra["mmloop"]
    assert 0.0 <= extra["confidence"] <= 1.0 and isinstance(extra["flags"], list), extra

    text, lps, usage, finish = "", [], None, None
    for chunk in client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            if ch.logprobs and ch.logprobs.content:
                lps += [t.logprob for t in ch.logprobs.content]
            finish = ch.finish_reason or finish
    assert text == c.message.content, (text, c.message.content)
    assert lps == got and finish == "length" and usage.total_tokens == r.usage.total_tokens

    sampled = dict(model="tiny", messages=question("img1.png"), max_tokens=6, temperature=1.0, n=3, seed=7)
    a = [ch.message.content for ch in client.chat.completions.create(**sampled).choices]
    b = [ch.message.content for ch in client.chat.completions.create(**sampled).choices]
    assert len(a) == 3 and a == b, (a, b)

    la = client.chat.completions.create(model="lora", messages=question("img0.png"), max_tokens=8, temperature=0)
    assert la.model == "lora" and la.choices[0].message.content

    def raises(exc, **kw):
        try:
            client.chat.completions.create(**kw)
        except exc as e:
            return e
        raise AssertionError(f"{exc.__name__} expected for {kw}")

    raises(openai.NotFoundError, model="gpt-9", messages=question("img0.png"))
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]
    raises(openai.BadRequestError, model="tiny", messages=bad)
    raises(openai.BadRequestError, model="tiny", messages=question("img0.png"), n=0)
    raises(openai.BadRequestError, model="tiny", messages=question("img0.png"), logprobs=True, top_logprobs=21)
    wrong = openai.OpenAI(base_url=url, api_key="sk-wrong")
    try:
        wrong.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass
    again = client.chat.completions.create(model="tiny", messages=question("img2.png"), max_tokens=4)
    assert again.choices[0].message.content is not None
    print("check_serve: openai", openai.__version__, "- direct checks passed")


def gateway_checks(url, upstream_url):
    import openai

    gw = openai.OpenAI(base_url=url, api_key="sk-gate")
    direct = openai.OpenAI(base_url=upstream_url, api_key="sk-check")
    assert [m.id for m in gw.models.list().data] == ["exp"]
    arms, ids = {}, []
    for u in range(10):
        user = f"user-{u}"
        r = gw.chat.completions.create(model="exp", messages=question("img1.png"), max_tokens=6, temperature=0, user=user)
        ext = r.choices[0].model_extra["mmloop"]
        arm = ext["experiment"]["arm"]
        arms.setdefault(arm, []).append(user)
        d = direct.chat.completions.create(model={"a": "tiny", "b": "lora"}[arm], messages=question("img1.png"),
                                           max_tokens=6, temperature=0)
        assert r.choices[0].message.content == d.choices[0].message.content, (arm, r, d)
        assert abs(ext["confidence"] - d.choices[0].model_extra["mmloop"]["confidence"]) < 1e-9
        assert r.choices[0].logprobs is None and r.model == "exp"
        ids.append(r.id)
    assert set(arms) == {"a", "b"}, arms
    text, usage, ext = "", None, None
    for chunk in gw.chat.completions.create(model="exp", messages=question("img0.png"), max_tokens=5, temperature=0,
                                            user="user-1", stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            ext = (ch.model_extra or {}).get("mmloop") or ext
    assert text and usage.completion_tokens == 5 and 0.0 <= ext["confidence"] <= 1.0, (text, usage, ext)
    for i in ids[:4]:
        req = urllib.request.Request(url + "/feedback", data=json.dumps({"id": i, "outcome": "accept"}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": "Bearer sk-gate"})
        assert json.load(urllib.request.urlopen(req))["recorded"] is True
    print("check_serve: gateway checks passed (arms a:", len(arms["a"]), "users, b:", len(arms["b"]), "users)")


def spawn(cmd):
    """A server whose stderr goes to a file read on failure (a pipe nobody reads could fill
    and stall it)."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log
    return proc


def wait_up(server, url):
    for _ in range(600):
        if server.poll() is not None:
            server.log.seek(0)
            sys.exit("mmloop serve exited: " + server.log.read())
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("mmloop serve did not come up in 60 s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmloop", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "mmloop"))
    ap.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.in_venv:
        if a.upstream:
            gateway_checks(a.url, a.upstream)
        else:
            checks(a.url)
        return
    py = ensure_venv()
    port = free_port()
    server = spawn(
        [a.mmloop, "serve", "--model", os.path.join(FIXTURES, "qwen2_vl"), "--served-model-name", "tiny",
         "--adapters", "lora=" + os.path.join(FIXTURES, "qwen2_vl", "adapters", "lora"),
         "--port", str(port), "--api-key", "sk-check"])
    gateway = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_up(server, url)
        subprocess.run([py, __file__, "--in-venv", "--url", url + "/v1"], check=True)

        project = tempfile.mkdtemp(prefix="mmloop-check-serve-")
        subprocess.run([a.mmloop, "init", project], check=True, stdout=subprocess.DEVNULL)
        gport = free_port()
        gateway = spawn(
            [a.mmloop, "serve", "--port", str(gport), "--api-key", "sk-gate", "--upstream-api-key", "sk-check",
             "--experiment", "exp", "--project", project,
             "--arm", f"a={url}/v1#tiny", "--arm", f"b={url}/v1#lora"])
        gurl = f"http://127.0.0.1:{gport}"
        wait_up(gateway, gurl)
        subprocess.run([py, __file__, "--in-venv", "--url", gurl + "/v1", "--upstream", url + "/v1"], check=True)
        gateway.terminate()
        gateway.wait(timeout=30)
        status = json.loads(subprocess.run([a.mmloop, "ab", "status", project, "exp", "--json"], check=True,
                                           capture_output=True, text=True).stdout)
        exposures = sum(arm["exposures"] for arm in status["arms"])
        outcomes = sum(arm["outcomes"] for arm in status["arms"])
        assert exposures == 11 and outcomes == 4, status
        shutil.rmtree(project, ignore_errors=True)
        print("check_serve: mmloop ab status counts", exposures, "exposures and", outcomes, "outcomes - all checks passed")
    finally:
        for p in (gateway, server):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=30)


if __name__ == "__main__":
    main()
