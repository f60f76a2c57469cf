"""`omost-bot preview FILE`: a canvas's layout as a table, a PNG and optionally JSON. No GPU.

FILE is a model answer or bare canvas code (`-` reads stdin). An input that does not parse exits 2
with the line-numbered error and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "show a canvas's layout: a table, a PNG and optionally JSON (no GPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="canvas code or a whole model answer; '-' reads stdin")
    parser.add_argument("-o", "--output", metavar="OUT.png", help="where to write the preview PNG")
    parser.add_argument("--width", type=int, default=896, help="image width the layout is for (default 896)")
    parser.add_argument(
        "--height", type=int, default=1152, help="image height the layout is for (default 1152)"
    )
    parser.add_argument("--json", action="store_true", help="print the layout as JSON instead of a table")


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


def run(args: argparse.Namespace) -> int:
    from bot.commands.canvas_input import BadInput, read_canvas
    from omost_engine.canvas import process
    from omost_engine.preview import render_layout_preview

    if args.width <= 0 or args.height <= 0:
        print(
            f"error: --width and --height must be positive, got {args.width}x{args.height}", file=sys.stderr
        )
        return 2
    try:
        canvas = read_canvas(args.file)
    except BadInput as e:
        print(e, file=sys.stderr)
        return 2
    layout = process(canvas)

    if args.output:
        out = Path(args.output)
    elif args.file == "-":
        out = Path("canvas.preview.png")
    else:
        out = Path(args.file).with_suffix(".preview.png")
    render_layout_preview(layout, args.width, args.height).save(out)

    if args.json:
        print(json.dumps(layout_json(layout, canvas.corrections, args.width, args.height), indent=2))
    else:
        print(layout_table(layout))
        for c in canvas.corrections:
            print(f"corrected {c}")
        print(f"preview written to {out}", file=sys.stderr)
    return 0
