"""The `omost-bot` subcommands, one module each (see bot/cli.py)."""
