"""`omost-bot grammar` prints the grammar the bot enforces; `omost-bot doctor` and the config say
whether answers will be constrained, and a bad dialect name is a config error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from bot.commands.doctor import report
from bot.config import ConfigError
from omost_engine.grammar import to_gbnf, to_lark, to_regex
from tests.bot_config import bot_config
from tests.fakes.openai_server import FakeOpenAIServer


@pytest.mark.parametrize(("fmt", "expected"), [("gbnf", to_gbnf), ("lark", to_lark), ("regex", to_regex)])
def test_the_grammar_command_prints_each_format(
    fmt: str, expected: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["grammar", "--format", fmt]) == 0
    assert capsys.readouterr().out.rstrip("\n") == expected().rstrip("\n")  # type: ignore[operator]


def test_gbnf_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grammar"]) == 0
    assert capsys.readouterr().out.startswith("root ::= ")


def test_doctor_says_whether_answers_are_constrained(tmp_path: Path) -> None:
    local = report(bot_config(tmp_path))["grammar"]
    assert local["constrained"] and "llguidance" in local["how"]
    off = report(bot_config(tmp_path, llm='constrain = "off"'))["grammar"]
    assert not off["constrained"] and "repair" in off["how"]
    named = 'backend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nserver = "llama.cpp"'
    assert "`grammar`" in report(bot_config(tmp_path, llm=named))["grammar"]["how"]
    for dialect, constrained in (("sglang", True), ("ollama", False)):
        with FakeOpenAIServer(dialect=dialect) as server:
            probed = f'backend = "openai"\nbase_url = "{server.base_url}"'
            grammar = report(bot_config(tmp_path, llm=probed))["grammar"]
            assert grammar["constrained"] is constrained and grammar["server"] == dialect


def test_an_unknown_server_dialect_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="server"):
        bot_config(tmp_path, llm='server = "vllm2"')
