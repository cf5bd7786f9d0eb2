"""Any OpenAI-compatible HTTP server (OpenAI, vLLM, llama.cpp server, TGI...) behind the LLMBackend interface.

The base URL and the API key come from environment variables whose *names* are in the llm spec
(`base_url_env`, `api_key_env`); their values are never put in configs, logs or error messages.
Requests: one prompt per request (the chat API takes no batch), `concurrency` at a time from a thread
pool, `timeout_s` each, retried with exponential backoff on 429, 5xx and connection errors.
Plain urllib: the protocol is a few JSON POSTs and no extra client library is needed.
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from spae.errors import InvalidConfigError, UserError
from spae.llm.backends import LLMBackend, cut_at_stop

log = logging.getLogger(__name__)

APIS = ("completions", "chat")
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_MAX_STOP = 4  # OpenAI accepts at most 4 stop sequences; the rest are applied locally


class OpenAIHTTPError(UserError, RuntimeError):
    """A request that failed for good (after retries, or a non-retryable status)."""


class OpenAIHTTPBackend(LLMBackend):
    def __init__(self, model_id: str, base_url_env: str = "OPENAI_BASE_URL", api_key_env: str | None =
                 "OPENAI_API_KEY", api: str = "completions", timeout_s: float = 60.0, max_retries: int = 5,
                 concurrency: int = 8, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 name: str = "openai"):
        if api not in APIS:
            raise InvalidConfigError(f"llm.api must be one of {APIS}, got {api!r}")
        if not model_id or model_id == "???":
            raise InvalidConfigError("llm.model_id is required for the openai_http backend (the server's model name)")
        if concurrency < 1 or max_retries < 0:
            raise InvalidConfigError("llm.concurrency must be >= 1 and llm.max_retries >= 0")
        self.model_id, self.api, self.name = model_id, api, name
        self.base_url_env, self.api_key_env = base_url_env, api_key_env
        self.timeout_s, self.max_retries, self.concurrency = timeout_s, max_retries, concurrency
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s

    @classmethod
    def from_spec(cls, spec: dict) -> "OpenAIHTTPBackend":
        for key in ("api_key", "base_url"):
            if key in spec:
                raise InvalidConfigError(f"llm.{key} must not be in a config: put it in an environment variable and "
                                 f"name that variable in llm.{key}_env")
        return cls(model_id=spec.get("model_id"), base_url_env=spec.get("base_url_env", "OPENAI_BASE_URL"),
                   api_key_env=spec.get("api_key_env", "OPENAI_API_KEY"), api=spec.get("api", "completions"),
                   timeout_s=float(spec.get("timeout_s", 60)), max_retries=int(spec.get("max_retries", 5)),
                   concurrency=int(spec.get("concurrency", 8)), backoff_s=float(spec.get("backoff_s", 1.0)),
                   name=spec.get("name", "openai"))

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai_http", "name": self.name, "model_id": self.model_id, "api": self.api,
                "base_url_env": self.base_url_env}

    # ---------------------------------------------------------------- public API
    def generate(self, prompts: list[str], max_new_tokens: int, stop: list[str]) -> list[str]:
        base_url, key = self._endpoint()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda p: self._generate_one(base_url, key, p, max_new_tokens, stop), prompts))

    def choice_scoring_unavailable(self, with_embeddings: bool = False) -> str | None:
        return ("the OpenAI-compatible API returns log-probabilities of the tokens the server generates, not of "
                "given continuations (scoring a prompt's text through `echo` + `logprobs` is not part of the API "
                "and most servers refuse it), so the constrained-choice ranking cannot be computed; use a local "
                "model (llm.backend=hf_local) for it")

    # ---------------------------------------------------------------- requests
    def _endpoint(self) -> tuple[str, str | None]:
        base_url = os.environ.get(self.base_url_env, "").strip()
        if not base_url:
            raise OpenAIHTTPError(f"environment variable {self.base_url_env} is not set: export it to the "
                                  "server's base URL (e.g. http://host:8000/v1)")
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return base_url.rstrip("/"), key

    def _generate_one(self, base_url: str, key: str | None, prompt: str, max_new_tokens: int,
                      stop: list[str]) -> str:
        body: dict[str, Any] = {"model": self.model_id, "max_tokens": max_new_tokens, "temperature": 0.0}
        if stop:
            body["stop"] = list(stop)[:_MAX_STOP]
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            reply = self._post(base_url, key, "/chat/completions", body)
            text = (_choice(reply, "/chat/completions").get("message") or {}).get("content") or ""
        else:
            body["prompt"] = prompt
            reply = self._post(base_url, key, "/completions", body)
            text = _choice(reply, "/completions").get("text") or ""
        return cut_at_stop(text, stop)  # servers differ on whether they cut; cut here either way

    def _post(self, base_url: str, key: str | None, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            request = urllib.request.Request(base_url + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
                try:
                    reply = json.loads(raw.decode(errors="replace"))
                except json.JSONDecodeError:
                    raise OpenAIHTTPError(f"the server at ${self.base_url_env} answered {path} with non-JSON "
                                          f"({self._redact(raw[:120].decode(errors='replace'), key)!r}); check that "
                                          f"{self.base_url_env} points to an OpenAI-compatible API (…/v1)") from None
                if not isinstance(reply, dict):
                    raise OpenAIHTTPError(f"the server at ${self.base_url_env} answered {path} with JSON that is not "
                                          "an object; check that it is an OpenAI-compatible API")
                return reply
            except urllib.error.HTTPError as err:
                detail = self._redact(err.read().decode(errors="replace")[:300], key)
                last_error = f"HTTP {err.code} on {path}: {detail}"
                if err.code not in _RETRY_STATUS:
                    raise OpenAIHTTPError(f"server at ${self.base_url_env} refused the request: {last_error}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                last_error = f"cannot reach the server ({type(reason).__name__}: {self._redact(str(reason), key)})"
            log.warning("request %s attempt %d/%d failed: %s", path, attempt + 1, self.max_retries + 1, last_error)
        raise OpenAIHTTPError(f"the OpenAI-compatible server at ${self.base_url_env} failed after "
                              f"{self.max_retries + 1} attempts: {last_error}. Check that the server runs and that "
                              f"{self.base_url_env} points to it (…/v1).")

    @staticmethod
    def _redact(text: str, key: str | None) -> str:
        return text.replace(key, "<redacted>") if key else text


def _choice(reply: dict, path: str) -> dict:
    """The first choice of a completion reply; a reply without one is an unusable server, not an answer."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        error = reply.get("error")
        raise OpenAIHTTPError(f"the server's reply to {path} has no choices"
                              + (f" (error: {str(error)[:200]})" if error else "")
                              + "; check llm.model_id and that the server speaks the OpenAI API")
    return choices[0]
