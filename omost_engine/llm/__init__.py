"""Language-model backends: one streaming interface (base.py), local and OpenAI-compatible."""
