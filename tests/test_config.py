"""config.toml loading: defaults, the shipped example, and errors an operator can act on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from bot.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.example.toml"


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> tuple[ConfigError, Path]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value, path


# --- defaults and the example -----------------------------------------------------------------


def test_no_path_and_no_config_toml_gives_every_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.source == "defaults"
    assert config.llm.backend == "local"
    assert config.llm.model == "lllyasviel/omost-llama-3-8b-4bits"
    assert (config.llm.temperature, config.llm.top_p, config.llm.max_new_tokens) == (0.6, 0.9, 4096)
    assert config.render.model == "SG161222/RealVisXL_V4.0"
    assert (config.render.width, config.render.height) == (896, 1152)
    assert (config.render.steps, config.render.cfg, config.render.hires_scale) == (25, 5.0, 1.0)
    assert config.render.negative_prompt == "lowres, bad anatomy, bad hands, cropped, worst quality"
    assert not config.telegram.enabled and not config.discord.enabled
    assert config.data.dir == tmp_path / "data"
    assert config.data.database.parent == config.data.dir


def test_no_path_reads_config_toml_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[render]\nsteps = 30\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.render.steps == 30
    assert config.source == "config.toml"


def test_the_example_loads_and_matches_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.model_dump(exclude={"data"}) == Config().model_dump(exclude={"data"})
    assert config.data.dir == REPO / "data"  # relative to the file, not the working directory


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _fields(annotation, f"{name}.")
        else:
            out.append(prefix + name)
    return out


def _example_keys() -> dict[str, int]:
    """dotted key -> line number, for keys set or shown commented out ("# base_url = ...")."""
    keys: dict[str, int] = {}
    section = ""
    for number, line in enumerate(EXAMPLE.read_text().splitlines(), 1):
        if m := re.fullmatch(r"\[(\w+)\]", line.strip()):
            section = m.group(1)
        elif m := re.match(r"#?\s*(\w+)\s*=", line):
            keys[f"{section}.{m.group(1)}"] = number
    return keys


def test_every_field_of_the_model_is_in_the_example_with_a_comment() -> None:
    lines = EXAMPLE.read_text().splitlines()
    keys = _example_keys()
    missing = [f for f in _fields(Config) if f not in keys]
    assert not missing, f"config.example.toml lacks {missing}"
    assert set(keys) <= set(_fields(Config)), "the example names keys the model does not have"
    for key, number in keys.items():
        # Above a key (or above a group of keys, like width and height) stands a comment.
        above = number - 2
        while re.match(r"\w+\s*=", lines[above]):
            above -= 1
        assert lines[above].startswith("#"), f"{key} (line {number}) has no comment above it"
        assert not re.match(r"#?\s*\w+\s*=", lines[above]), f"{key}: the comment explains nothing"


def test_example_keys_that_are_set_parse_as_toml() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert set(data) == set(Config.model_fields)


# --- malformed files: each error names the file and the key ---------------------------------


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, "[render]\nsteps = 20\nwidth = \n")
    message = str(err)
    assert str(path) in message
    assert "line 3" in message
    assert "width" in message  # the offending line is shown


def test_wrong_type_names_key_expected_and_got(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, '[render]\nwidth = "896"\n')
    assert str(err) == f"{path}: render.width: expected an integer, got '896' (a string)"


def test_unknown_key_is_caught_with_a_suggestion(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, "[render]\nwidht = 896\n")
    message = str(err)
    assert message.startswith(f"{path}: render.widht: unknown key")
    assert "did you mean 'width'" in message


def test_unknown_section_is_caught(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, "[rendering]\nwidth = 896\n")
    assert f"{path}: rendering: unknown section" in str(err)
    assert "did you mean 'render'" in str(err)


def test_bad_enum_lists_the_choices(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, '[llm]\nbackend = "ollama"\n')
    assert str(err) == f"{path}: llm.backend: expected 'local' or 'openai', got 'ollama' (a string)"
    err, _ = error_for(tmp_path, '[render]\nmemory = "lots"\n')
    assert "render.memory: expected 'auto', 'resident' or 'offload'" in str(err)


def test_width_not_a_multiple_of_64(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, "[render]\nwidth = 900\n")
    assert (
        str(err) == f"{path}: render.width: must be a multiple of 64 (try 896 or 960), got 900 (an integer)"
    )


def test_out_of_range_values_say_the_bound(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, "[render]\nhires_scale = 2.5\n[llm]\ntop_p = 0\n")
    message = str(err)
    assert f"{path}: render.hires_scale: must be at most 2.0, got 2.5" in message
    assert f"{path}: llm.top_p: must be greater than 0.0, got 0" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    err, _ = error_for(tmp_path, "[render]\nwidth = 900\nheight = 1000\nsteps = 0\n")
    assert {p.key for p in err.problems} == {"render.width", "render.height", "render.steps"}


def test_cross_field_rules_name_the_key(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, '[llm]\nbackend = "openai"\n')
    assert str(err).startswith(f'{path}: llm.base_url: is required when backend = "openai"')
    err, path = error_for(tmp_path, "[queue]\nmax_per_user = 5\nmax_total = 2\n")
    assert str(err).startswith(f"{path}: queue.max_per_user: must not exceed queue.max_total")


def test_list_items_are_named_by_index(tmp_path: Path) -> None:
    err, _path = error_for(
        tmp_path, '[access]\nadmins = [1, "telegram:2", 3.5]\nblocked_words = ["ok", "..."]\n'
    )
    keys = {p.key for p in err.problems}
    assert keys == {"access.admins[2]", "access.blocked_words[1]"}


def test_a_table_where_a_value_belongs(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, "render = 5\n")
    assert str(err) == f"{path}: render: expected a table (a [section]), got 5 (an integer)"


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "latin.toml"
    bad.write_bytes(b'[render]\nnegative_prompt = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin\.toml: is not UTF-8"):
        load_config(bad)


# --- secrets --------------------------------------------------------------------------------


def test_token_is_read_from_the_named_variable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[telegram]\nenabled = true\ntoken_env = "MY_TG"\n'))
    assert config.telegram_token({"MY_TG": " 123:abc \n"}) == "123:abc"
    assert config.is_secret_set("telegram.token_env", {"MY_TG": "x"})
    assert not config.is_secret_set("telegram.token_env", {})


def test_missing_env_var_names_the_variable_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[discord]\nenabled = true\ntoken_env = "MY_DISCORD"\n')
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        config.discord_token({})
    message = str(info.value)
    assert message.startswith(f"{path}: discord.token_env: the environment variable MY_DISCORD is not set")
    with pytest.raises(ConfigError, match="MY_DISCORD is empty"):
        config.discord_token({"MY_DISCORD": "  "})


def test_api_key_is_optional_but_named_when_configured(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path, '[llm]\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'))
    assert plain.llm_api_key({}) is None
    keyed = load_config(
        write(tmp_path, '[llm]\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "K"\n')
    )
    assert keyed.llm_api_key({"K": "sk-1"}) == "sk-1"
    with pytest.raises(ConfigError, match=r"llm\.api_key_env: the environment variable K is not set"):
        keyed.llm_api_key({})


def test_a_pasted_token_is_refused_and_never_echoed(tmp_path: Path) -> None:
    token = "123456:AAE-secret-token-value"
    err, path = error_for(tmp_path, f'[telegram]\ntoken_env = "{token}"\n')
    assert str(err).startswith(f"{path}: telegram.token_env: expected the NAME of an environment variable")
    assert token not in str(err)


def test_config_is_immutable() -> None:
    config = Config()
    with pytest.raises(ValueError):
        config.render.width = 128  # type: ignore[misc]


def test_urls_must_be_http(tmp_path: Path) -> None:
    err, path = error_for(tmp_path, '[llm]\nbackend = "openai"\nbase_url = "localhost:8000/v1"\n')
    assert (
        str(err)
        == f"{path}: llm.base_url: expected an http:// or https:// URL, got 'localhost:8000/v1' (a string)"
    )
    config = load_config(write(tmp_path, '[telegram]\nbase_url = "http://127.0.0.1:8081"\n'))
    assert config.telegram.base_url == "http://127.0.0.1:8081"


def test_the_render_family_picks_its_default_model() -> None:
    from bot.config import parse_config

    assert parse_config('[render]\nfamily = "flux2-klein"\n').render.model == "black-forest-labs/FLUX.2-klein-4B"
    assert parse_config("").render.model == "SG161222/RealVisXL_V4.0"
    assert parse_config('[render]\nfamily = "flux2-klein"\nmodel = "/srv/klein"\n').render.model == "/srv/klein"
