"""The Canvas model: what an Omost answer describes, validated, and what it turns into.

Owns the location/offset/area vocabularies and their box maths (SPEC.md section 2), the colour
names (CSS named colours via webcolors plus SPEC's extras), validation with every correction
reported (SPEC 3), and `process()`, which turns a canvas into a `Layout` (SPEC 4): regions far
to near with their boxes, colours, prompt prefixes and suffixes, and the colour sketch.

It knows nothing of text or code: `canvas_code.py` turns answers into the `build_*` calls here.
It must not know about chats, models or GPUs.

Errors:

    CanvasError            anything a user or a model wrote that is not a valid canvas
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import webcolors

GRID = 90
"""Boxes live on a 90 x 90 grid, x to the right, y downward (SPEC 2)."""

# SPEC 2. Dicts keep insertion order, which is the order the models were tuned with (SPEC 7).
LOCATIONS: dict[str, tuple[int, int]] = {
    "in the center": (45, 45),
    "on the left": (15, 45),
    "on the right": (75, 45),
    "on the top": (45, 15),
    "on the bottom": (45, 75),
    "on the top-left": (15, 15),
    "on the top-right": (75, 15),
    "on the bottom-left": (15, 75),
    "on the bottom-right": (75, 75),
}
OFFSETS: dict[str, tuple[int, int]] = {
    "no offset": (0, 0),
    "slightly to the left": (-10, 0),
    "slightly to the right": (10, 0),
    "slightly to the upper": (0, -10),
    "slightly to the lower": (0, 10),
    "slightly to the upper-left": (-10, -10),
    "slightly to the upper-right": (10, -10),
    "slightly to the lower-left": (-10, 10),
    "slightly to the lower-right": (10, 10),
}
AREAS: dict[str, tuple[int, int]] = {
    "a small square area": (50, 50),
    "a small vertical area": (40, 60),
    "a small horizontal area": (60, 40),
    "a medium-sized square area": (60, 60),
    "a medium-sized vertical area": (50, 80),
    "a medium-sized horizontal area": (80, 50),
    "a large square area": (70, 70),
    "a large vertical area": (60, 90),
    "a large horizontal area": (90, 60),
}

# SPEC 3: the CSS/HTML named colours (webcolors lists both gray/grey spellings) plus navyblue.
# webcolors' CSS3 table predates rebeccapurple (CSS Color 4), which Omost's own table has: without
# it the name would be "corrected" to purple and the region drawn in another colour (issue 12).
COLORS: dict[str, tuple[int, int, int]] = {
    name: tuple(webcolors.name_to_rgb(name, spec="css3")) for name in webcolors.names("css3")
}
COLORS["navyblue"] = (0, 0, 128)
COLORS["rebeccapurple"] = (102, 51, 153)

FUZZY_MIN_RATIO = 0.5
"""difflib similarity a near-miss name needs to be corrected rather than rejected (SPEC 3)."""

Box = tuple[int, int, int, int]
"""(top, bottom, left, right) on the 90 x 90 grid; bottom and right are exclusive slice ends."""


class CanvasError(ValueError):
    """A canvas (or the text holding it) is invalid. The message is written for the chat user.

    `line` is the 1-based line in the canvas code where the problem is, when known.
    """

    def __init__(self, message: str, line: int | None = None) -> None:
        self.reason = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass(frozen=True)
class Correction:
    """A value the model wrote that was changed to the nearest allowed one (never silent)."""

    where: str  # "global" or "region 3" (1-based, in the order written)
    field: str
    given: str
    corrected: str
    line: int | None = None

    def __str__(self) -> str:
        at = f" (line {self.line})" if self.line is not None else ""
        return f"{self.where}: {self.field} {self.given!r} -> {self.corrected!r}{at}"


@dataclass(frozen=True)
class GlobalDescription:
    description: str
    detailed_descriptions: tuple[str, ...]
    tags: str
    color: str


@dataclass(frozen=True)
class Region:
    location: str
    offset: str
    area: str
    distance_to_viewer: float
    description: str
    detailed_descriptions: tuple[str, ...]
    tags: str
    atmosphere: str
    style: str
    quality_meta: str
    color: str

    @property
    def box(self) -> Box:
        return box_for(self.location, self.offset, self.area)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]


@dataclass(frozen=True)
class Canvas:
    """A validated canvas. Equality ignores `corrections`: they describe how it was read."""

    global_description: GlobalDescription
    regions: tuple[Region, ...] = ()
    corrections: tuple[Correction, ...] = field(default=(), compare=False)


# --- normalisation -------------------------------------------------------------------------


PROMPT_STRIP = ",. "
"""SPEC 3: exactly these characters are stripped from both ends of a prompt string."""


def clean_prompt(text: str) -> str:
    """SPEC 3: strip leading/trailing commas, full stops and spaces, then end with one full stop.

    As in Omost, nothing else is stripped (a tab or newline stays) and an empty or
    punctuation-only string becomes "." and is kept: an empty `tags` still adds a "." suffix to
    its region's bags, so dropping it would change the tokens the picture is drawn from.
    """
    return text.strip(PROMPT_STRIP) + "."


def closest_name(
    given: str, allowed: Sequence[str], what: str, *, line: int | None = None
) -> tuple[str, bool]:
    """Lower-case `given` and match it to the most similar allowed name (SPEC 3).

    Returns (name, changed). No match at ratio >= 0.5 is a CanvasError listing the choices.
    Repeated and surrounding spaces are collapsed first (a deliberate difference from Omost).
    """
    lowered = " ".join(given.lower().split())
    if lowered in allowed:
        return lowered, lowered != given
    # difflib.get_close_matches is what Omost asks, so equal scores resolve as in Omost: toward
    # the candidate that sorts last ('ayyy' -> 'navy', not 'gray'). Its ratio is also measured
    # with the candidate as the first sequence, which is not always symmetric.
    matches = difflib.get_close_matches(lowered, list(allowed), n=1, cutoff=FUZZY_MIN_RATIO)
    if not matches:
        if len(allowed) > 12:
            choices = "a CSS colour name such as 'darkslategray' or 'firebrick'"
        else:
            choices = "one of " + ", ".join(repr(a) for a in allowed)
        raise CanvasError(f"{what} {given!r} is not recognised; expected {choices}", line)
    return matches[0], True


def box_for(location: str, offset: str, area: str) -> Box:
    """SPEC 2: the box of a (location, offset, area) triple on the 90 x 90 grid, clamped."""
    x, y = LOCATIONS[location]
    dx, dy = OFFSETS[offset]
    w, h = AREAS[area]
    cx, cy = x + dx, y + dy

    def clamp(v: int) -> int:
        return max(0, min(GRID, v))

    return clamp(cy - h // 2), clamp(cy + h // 2), clamp(cx - w // 2), clamp(cx + w // 2)


# --- building a canvas from already-typed values ------------------------------------------------


class CorrectionLog:
    """Collects the corrections made while one canvas is read."""

    def __init__(self) -> None:
        self.items: list[Correction] = []

    def name(self, given: str, allowed: Sequence[str], what: str, where: str, line: int | None) -> str:
        name, changed = closest_name(given, allowed, what, line=line)
        if changed:
            self.items.append(Correction(where, what, given, name, line))
        return name


def build_global(
    *,
    description: str,
    detailed_descriptions: Sequence[str],
    tags: str,
    color: str,
    log: CorrectionLog,
    line: int | None = None,
) -> GlobalDescription:
    # An empty description is accepted, as Omost does: it becomes "." like any empty prompt.
    return GlobalDescription(
        description=clean_prompt(description),
        detailed_descriptions=tuple(clean_prompt(d) for d in detailed_descriptions),
        tags=clean_prompt(tags),
        color=log.name(color, tuple(COLORS), "HTML_web_color_name", "global", line),
    )


def build_region(
    *,
    index: int,
    location: str,
    offset: str,
    area: str,
    distance_to_viewer: float,
    description: str,
    detailed_descriptions: Sequence[str],
    tags: str,
    atmosphere: str,
    style: str,
    quality_meta: str,
    color: str,
    log: CorrectionLog,
    line: int | None = None,
) -> Region:
    """Validate one local description. `index` is 1-based in the order written."""
    where = f"region {index}"
    distance = float(distance_to_viewer)
    # Omost asks only `> 0`: infinity (written 1e999) is accepted and sorts farthest; NaN is not.
    if not distance > 0:
        raise CanvasError(f"distance_to_viewer must be a positive number, got {distance_to_viewer!r}", line)
    return Region(
        location=log.name(location, tuple(LOCATIONS), "location", where, line),
        offset=log.name(offset, tuple(OFFSETS), "offset", where, line),
        area=log.name(area, tuple(AREAS), "area", where, line),
        distance_to_viewer=distance,
        description=clean_prompt(description),
        detailed_descriptions=tuple(clean_prompt(d) for d in detailed_descriptions),
        tags=clean_prompt(tags),
        atmosphere=clean_prompt(atmosphere),
        style=clean_prompt(style),
        quality_meta=clean_prompt(quality_meta),
        color=log.name(color, tuple(COLORS), "HTML_web_color_name", where, line),
    )


# --- the layout (SPEC 4) ---------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutRegion:
    """One region as the renderer and the previews see it."""

    kind: Literal["global", "local"]
    box: Box
    rgb: tuple[int, int, int]
    color: str
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    description: str
    location: str | None = None
    offset: str | None = None
    area: str | None = None
    distance_to_viewer: float | None = None

    @property
    def short_description(self) -> str:
        return self.prefixes[-1]


@dataclass(frozen=True)
class Layout:
    regions: tuple[LayoutRegion, ...]
    """Global first, then local regions far to near (stable for equal distances)."""
    color_sketch: np.ndarray = field(compare=False, repr=False)
    """A 90 x 90 x 3 float array in 0..255 (SPEC 4)."""


def process(canvas: Canvas) -> Layout:
    """SPEC 4: regions far to near with boxes, colours, prefixes/suffixes, and the colour sketch."""
    g = canvas.global_description
    regions = [
        LayoutRegion(
            kind="global",
            box=(0, GRID, 0, GRID),
            rgb=COLORS[g.color],
            color=g.color,
            prefixes=(g.description,),
            suffixes=(*g.detailed_descriptions, g.tags),
            description=g.description,
        )
    ]
    # sorted() is stable, so regions at equal distance keep the order they were written in.
    for r in sorted(canvas.regions, key=lambda r: -r.distance_to_viewer):
        regions.append(
            LayoutRegion(
                kind="local",
                box=r.box,
                rgb=r.rgb,
                color=r.color,
                prefixes=(g.description, r.description),
                suffixes=(*r.detailed_descriptions, r.tags, r.atmosphere, r.style, r.quality_meta),
                description=r.description,
                location=r.location,
                offset=r.offset,
                area=r.area,
                distance_to_viewer=r.distance_to_viewer,
            )
        )
    sketch = np.zeros((GRID, GRID, 3), dtype=np.float32)
    sketch[:, :] = np.array(regions[0].rgb, dtype=np.float32)
    for region in regions[1:]:
        top, bottom, left, right = region.box
        color = np.array(region.rgb, dtype=np.float32)
        sketch[top:bottom, left:right] = 0.7 * color + 0.3 * sketch[top:bottom, left:right]
    return Layout(regions=tuple(regions), color_sketch=sketch)


# --- what changed between two canvases (for the chat's change summary) -------------------------


@dataclass(frozen=True)
class CanvasDiff:
    """Regions matched by their short description (case-insensitive) between two canvases."""

    added: tuple[Region, ...]
    removed: tuple[Region, ...]
    changed: tuple[tuple[Region, Region], ...]  # (before, after)
    global_changed: bool

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed or self.global_changed)


def diff_canvases(before: Canvas, after: Canvas) -> CanvasDiff:
    def key(region: Region) -> str:
        return " ".join(region.description.lower().split())

    old: dict[str, list[Region]] = {}
    for region in before.regions:
        old.setdefault(key(region), []).append(region)
    added: list[Region] = []
    changed: list[tuple[Region, Region]] = []
    for region in after.regions:
        matches = old.get(key(region))
        if not matches:
            added.append(region)
            continue
        previous = matches.pop(0)
        if previous != region:
            changed.append((previous, region))
    removed = tuple(r for regions in old.values() for r in regions)
    return CanvasDiff(
        added=tuple(added),
        removed=removed,
        changed=tuple(changed),
        global_changed=before.global_description != after.global_description,
    )
