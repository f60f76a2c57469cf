"""Language-model backends: one streaming interface (base.py), local and OpenAI-compatible.

`create_backend(kind, model, ...)` (factory.py) builds one; importing this package stays cheap
(no torch, no httpx) until a backend is created.
"""

from omost_engine.llm.factory import create_backend

__all__ = ["create_backend"]
