"""Building a language-model backend from configuration values (kind, model, server, quantisation).

The composition root calls `create_backend` with what the config says; this keeps the concrete
classes (and torch, for the local one) out of its imports until one is chosen. It knows nothing
of config files or chats.
"""

from __future__ import annotations

from typing import Any, Literal

from omost_engine.llm.base import LLMBackend

BackendKind = Literal["local", "openai"]


def create_backend(
    kind: BackendKind,
    model: str,
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    quantize: Literal["4bit", "8bit"] | None = None,
    **options: Any,
) -> LLMBackend:
    """A backend of `kind`: "local" (transformers on this machine) or "openai" (a remote server).

    Extra keyword options go to the backend's constructor (e.g. device, context_tokens for local;
    timeout, retries for openai). Weights are not loaded here: the first generation loads them.
    """
    if kind == "local":
        if base_url is not None or api_key_env is not None:
            raise ValueError("base_url and api_key_env are for kind 'openai', not 'local'")
        from omost_engine.llm.local import LocalBackend

        return LocalBackend(model, quantize=quantize, **options)
    if kind == "openai":
        if not base_url:
            raise ValueError("kind 'openai' needs base_url, e.g. http://localhost:8000/v1")
        if quantize is not None:
            raise ValueError("quantize applies to kind 'local'; a server quantises its own model")
        from omost_engine.llm.openai_api import OpenAIBackend

        return OpenAIBackend(model, base_url, api_key_env=api_key_env, **options)
    raise ValueError(f"unknown language-model backend {kind!r}: expected 'local' or 'openai'")
