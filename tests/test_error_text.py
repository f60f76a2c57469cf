"""What an engine error shows in a chat: no addresses, local paths or keys; the log keeps them."""

from __future__ import annotations

import pytest

from omost_engine.errors import BackendError, ModelNotAvailable, OutOfMemory, user_text


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (
            "The image model /srv/models/realvis.safetensors is not available",
            "The image model \u2026/realvis.safetensors is not available",
        ),
        ("folder '~/weights/omost' does not exist", "folder '\u2026/omost' does not exist"),
        ("see ./cache/x and ../up/y", "see \u2026/x and \u2026/y"),
        (r"model C:\models\sdxl.safetensors missing", "model \u2026/sdxl.safetensors missing"),
        ("server http://10.0.0.5:8000/v1 failed", "server [address] failed"),
        ("the proxy said 'Authorization: Bearer sk-abc123XYZ'", "the proxy said 'Authorization: [redacted]'"),
        ("key sk-proj-0123456789 rejected", "key [redacted] rejected"),
        # What must stay: hub ids, status pairs, ordinary slashes.
        (
            "The model 'lllyasviel/omost-llama-3-8b-4bits' is offline",
            "The model 'lllyasviel/omost-llama-3-8b-4bits' is offline",
        ),
        ("HTTP 401/403 and/or 3/4 of the image", "HTTP 401/403 and/or 3/4 of the image"),
    ],
)
def test_user_text_hides_addresses_paths_and_keys(message: str, shown: str) -> None:
    assert user_text(message) == shown


def test_errors_keep_the_full_text_as_detail() -> None:
    missing = ModelNotAvailable("/srv/m.safetensors", "The image model /srv/m.safetensors is not available.")
    assert str(missing) == "The image model \u2026/m.safetensors is not available."
    assert (
        missing.detail == "The image model /srv/m.safetensors is not available."
        and missing.model == "/srv/m.safetensors"
    )
    oom = OutOfMemory("/srv/m", "The GPU ran out of memory with /srv/m.", needed_bytes=5)
    assert "/srv" not in str(oom) and "/srv/m" in oom.detail and oom.needed_bytes == 5
    server = BackendError("The server failed.", 500, True, detail="http://10.0.0.5/v1 said: CUDA error")
    assert str(server) == "The server failed." and server.detail.endswith("CUDA error") and server.retryable
