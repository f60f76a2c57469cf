"""omost_engine: the image-composing engine (canvas, LLM backends, renderer, job engine).

It knows nothing of chats: it never imports `bot` or `adapters`.
"""
