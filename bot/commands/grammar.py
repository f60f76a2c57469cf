"""`omost-bot grammar`: print the Canvas grammar for a server's config (GBNF, Lark or a regex).

The grammar is generated from the parser's vocabularies and limits (omost_engine/grammar.py), so
what an operator pastes into llama.cpp (`--grammar-file`), vLLM, SGLang or TGI is exactly what the
bot itself sends and enforces."""

from __future__ import annotations

import argparse
import sys

HELP = "print the Canvas grammar (GBNF, Lark or regex) to paste into a server's config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("gbnf", "lark", "regex"),
        default="gbnf",
        help="gbnf: llama.cpp, vLLM, SGLang (default); lark: llguidance; regex: TGI",
    )


def run(args: argparse.Namespace) -> int:
    from omost_engine.grammar import export

    sys.stdout.write(export(args.format))
    if args.format == "regex":
        sys.stdout.write("\n")
    return 0
