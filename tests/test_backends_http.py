"""OpenAIHTTPBackend against a real local server process (tests/servers/openai_compatible.py), and the dummy."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from spae.llm.backends import build_backend
from spae.llm.dummy import DummyBackend
from spae.llm.openai_http import OpenAIHTTPBackend, OpenAIHTTPError

SERVER = Path(__file__).parent / "servers" / "openai_compatible.py"
KEY = "sk-test-secret-123"
FEWSHOT = "red round This is a ball.\nblue square This is a box.\nred round small This is a"


@pytest.fixture(scope="module")
def server():
    proc = subprocess.Popen([sys.executable, str(SERVER), "--api-key", KEY], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), f"server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _control(url: str, **body) -> None:
    req = urllib.request.Request(url + "/control", data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(req, timeout=5).read()


def _stats(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "/stats", timeout=5).read())


@pytest.fixture
def env(server, monkeypatch):
    monkeypatch.setenv("TEST_LLM_URL", server + "/v1")
    monkeypatch.setenv("TEST_LLM_KEY", KEY)
    _control(server, fail_next=0, delay_s=0.0)
    return server


def _spec(**over) -> dict:
    spec = {"backend": "openai_http", "name": "t", "model_id": "dummy", "base_url_env": "TEST_LLM_URL",
            "api_key_env": "TEST_LLM_KEY", "api": "completions", "timeout_s": 5, "max_retries": 3,
            "concurrency": 4, "backoff_s": 0.01}
    spec.update(over)
    return spec


def test_dummy_rule():
    dummy = DummyBackend()
    assert dummy.generate([FEWSHOT], 8, []) == [" ball.\n"]
    assert dummy.generate([FEWSHOT], 8, [".", "\n"]) == [" ball"]
    assert dummy.generate(["no earlier line"], 8, ["\n"]) == [""]
    assert dummy.loglikelihood([(FEWSHOT, " ball"), (FEWSHOT, " box")]) == [0.0, -2.0]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_generate_over_http_matches_dummy(env, api):
    prompts = [FEWSHOT, FEWSHOT.replace("red round small", "blue square"), "x"] * 3
    backend = build_backend(_spec(api=api))
    assert backend.generate(prompts, 8, [".", "\n"]) == DummyBackend().generate(prompts, 8, [".", "\n"])


def test_concurrency_limit(env):
    _control(env, delay_s=0.05)
    before = _stats(env)["requests"]
    build_backend(_spec(concurrency=3)).generate([FEWSHOT] * 12, 4, ["\n"])
    stats = _stats(env)
    assert stats["requests"] - before == 12
    assert 1 < stats["max_concurrent"] <= 4  # 3 from us; other tests ran before with at most 4


def test_retries_after_503_then_succeeds(env):
    _control(env, fail_next=2, status=503)
    failed = _stats(env)["failed"]
    assert build_backend(_spec(concurrency=1)).generate([FEWSHOT], 4, ["."]) == [" ball"]
    assert _stats(env)["failed"] - failed == 2


def test_gives_up_after_max_retries_and_redacts_key(env):
    _control(env, fail_next=10, status=503)
    with pytest.raises(OpenAIHTTPError, match="after 3 attempts") as err:
        build_backend(_spec(max_retries=2)).generate([FEWSHOT], 4, ["."])
    assert KEY not in str(err.value)
    _control(env, fail_next=0)


def test_non_retryable_status_fails_at_once(env, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "wrong-key")
    before = _stats(env)["requests"]
    with pytest.raises(OpenAIHTTPError, match="HTTP 401"):
        build_backend(_spec()).generate([FEWSHOT], 4, ["."])
    assert _stats(env)["requests"] == before + 1  # not retried


def test_unreachable_server_names_the_env_var(monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TEST_LLM_URL", f"http://127.0.0.1:{port}/v1")
    with pytest.raises(OpenAIHTTPError, match=r"\$TEST_LLM_URL") as err:
        build_backend(_spec(max_retries=1)).generate(["hi"], 2, [])
    assert str(port) not in str(err.value)  # the URL itself is not echoed
    monkeypatch.delenv("TEST_LLM_URL")
    with pytest.raises(OpenAIHTTPError, match="TEST_LLM_URL is not set"):
        build_backend(_spec()).generate(["hi"], 2, [])


def test_secrets_never_in_config():
    with pytest.raises(ValueError, match="environment variable"):
        OpenAIHTTPBackend.from_spec(_spec(api_key="sk-abc"))
    assert "sk" not in json.dumps(OpenAIHTTPBackend.from_spec(_spec()).describe())


def test_timeout_is_retried_then_reported(env):
    _control(env, delay_s=1.0)
    before = _stats(env)["requests"]
    with pytest.raises(OpenAIHTTPError, match="after 2 attempts.*(timed out|Timeout)"):
        build_backend(_spec(timeout_s=0.2, max_retries=1)).generate([FEWSHOT], 4, ["."])
    assert _stats(env)["requests"] - before == 2
    _control(env, delay_s=0.0)
