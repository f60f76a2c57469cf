"""The config a command runs with: `-c FILE` (given before or after the subcommand), else
./config.toml when it exists, else the defaults; `--data-dir` where the command has it.

A bad file raises ConfigError, which bot/cli.py prints as one line per problem (exit 2).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.config import Config


def load_config_for(args: argparse.Namespace) -> Config:
    from bot.config import load_config

    config = load_config(getattr(args, "config", None))
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        config = config.model_copy(update={"data": config.data.model_copy(update={"dir": data_dir})})
    return config
