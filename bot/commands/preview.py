"""`omost-bot preview FILE`: a canvas's layout as a table, a PNG and optionally JSON. No GPU.

FILE is a model answer, bare canvas code, one of the bot's own PNGs (its canvas is read from the
PNG's text chunks), or `-` for stdin. An input that does not parse exits 2 with the line-numbered
error and writes nothing; so does an output path that cannot be written, checked first.
The PNG goes to `-o`, else beside FILE as FILE.preview.png (canvas.preview.png in the current
folder for stdin); its path is printed (in the JSON as "preview" with --json). The layout's size
is --width/--height, else the config's render.width/height.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "show a canvas's layout: a table, a PNG and optionally JSON (no GPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE", help="canvas code, a whole model answer or one of our PNGs; '-' reads stdin"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT.png",
        help="where to write the preview PNG (default: FILE.preview.png beside FILE; "
        "canvas.preview.png here for stdin)",
    )
    parser.add_argument(
        "--width", type=int, help="image width the layout is for (default: render.width, 896)"
    )
    parser.add_argument(
        "--height", type=int, help="image height the layout is for (default: render.height, 1152)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print the layout as JSON instead of a table (with "preview": path)',
    )


def layout_json(layout: Any, corrections: Any, width: int, height: int) -> dict[str, Any]:
    return {
        "width": width,
        "height": height,
        "regions": [
            {
                "kind": r.kind,
                "location": r.location,
                "offset": r.offset,
                "area": r.area,
                "distance_to_viewer": r.distance_to_viewer,
                "box": list(r.box),
                "color": list(r.rgb),
                "description": r.description,
                "prefixes": list(r.prefixes),
                "suffixes": list(r.suffixes),
            }
            for r in layout.regions
        ],
        "corrections": [
            {"where": c.where, "field": c.field, "given": c.given, "corrected": c.corrected, "line": c.line}
            for c in corrections
        ],
    }


def layout_table(layout: Any) -> str:
    header = ("#", "kind", "distance", "box (t,b,l,r)", "colour", "location / offset / area", "description")
    rows = [header]
    for i, r in enumerate(layout.regions):
        place = "whole image" if r.kind == "global" else f"{r.location} / {r.offset} / {r.area}"
        distance = "-" if r.distance_to_viewer is None else f"{r.distance_to_viewer:g}"
        rows.append((str(i), r.kind, distance, ",".join(map(str, r.box)), r.color, place, r.description))
    widths = [max(len(row[c]) for row in rows) for c in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[c]) for c, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def default_output(file: str) -> Path:
    """Where the preview PNG goes without -o (the docstring and --help say the same)."""
    if file == "-":
        return Path("canvas.preview.png")
    path = Path(file)
    return (
        path.with_name(path.stem + ".preview.png")
        if path.suffix
        else path.with_name(path.name + ".preview.png")
    )


def run(args: argparse.Namespace) -> int:
    from bot.commands.canvas_input import BadInput, check_output, read_canvas
    from bot.commands.config_arg import load_config_for
    from omost_engine.canvas import process
    from omost_engine.preview import render_layout_preview

    config = load_config_for(args)
    width = args.width if args.width is not None else config.render.width
    height = args.height if args.height is not None else config.render.height
    if width <= 0 or height <= 0:
        print(f"error: --width and --height must be positive, got {width}x{height}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else default_output(args.file)
    try:
        check_output(out)
        canvas = read_canvas(args.file)
    except BadInput as e:
        print(e, file=sys.stderr)
        return 2
    layout = process(canvas)
    render_layout_preview(layout, width, height).save(out)

    if args.json:
        data = layout_json(layout, canvas.corrections, width, height)
        print(json.dumps({**data, "preview": str(out)}, indent=2))
    else:
        print(layout_table(layout))
        for c in canvas.corrections:
            print(f"corrected {c}")
    print(f"preview written to {out}", file=sys.stderr)
    return 0
