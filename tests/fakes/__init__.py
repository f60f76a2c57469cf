"""Fakes for the tests and benchmarks: model backends that honour the engine interfaces."""
