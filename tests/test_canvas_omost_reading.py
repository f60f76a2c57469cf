"""Canvases are read the way Omost's own app reads them (issue 12, items 7-12).

Each expectation here was worked out from Omost's rules (its colour table, difflib's
get_close_matches, its prompt cleaning, its Python-level argument binding, its first-block regex),
not from our implementation. The deliberate differences are pinned at the end.
"""

from __future__ import annotations

import math

import pytest

from omost_engine.canvas import AREAS, COLORS, CanvasError, closest_name, process
from omost_engine.canvas_code import find_code, parse, to_code
from omost_engine.prompts import greedy_bags

# The CSS named colours as Omost lists them (both gray/grey spellings, navyblue, rebeccapurple),
# name=rrggbb.
OMOST_COLOURS = """
aliceblue=f0f8ff antiquewhite=faebd7 aqua=00ffff aquamarine=7fffd4 azure=f0ffff beige=f5f5dc
bisque=ffe4c4 black=000000 blanchedalmond=ffebcd blue=0000ff blueviolet=8a2be2 brown=a52a2a
burlywood=deb887 cadetblue=5f9ea0 chartreuse=7fff00 chocolate=d2691e coral=ff7f50
cornflowerblue=6495ed cornsilk=fff8dc crimson=dc143c cyan=00ffff darkblue=00008b
darkcyan=008b8b darkgoldenrod=b8860b darkgray=a9a9a9 darkgreen=006400 darkgrey=a9a9a9
darkkhaki=bdb76b darkmagenta=8b008b darkolivegreen=556b2f darkorange=ff8c00 darkorchid=9932cc
darkred=8b0000 darksalmon=e9967a darkseagreen=8fbc8f darkslateblue=483d8b darkslategray=2f4f4f
darkslategrey=2f4f4f darkturquoise=00ced1 darkviolet=9400d3 deeppink=ff1493 deepskyblue=00bfff
dimgray=696969 dimgrey=696969 dodgerblue=1e90ff firebrick=b22222 floralwhite=fffaf0
forestgreen=228b22 fuchsia=ff00ff gainsboro=dcdcdc ghostwhite=f8f8ff gold=ffd700
goldenrod=daa520 gray=808080 green=008000 greenyellow=adff2f grey=808080 honeydew=f0fff0
hotpink=ff69b4 indianred=cd5c5c indigo=4b0082 ivory=fffff0 khaki=f0e68c lavender=e6e6fa
lavenderblush=fff0f5 lawngreen=7cfc00 lemonchiffon=fffacd lightblue=add8e6 lightcoral=f08080
lightcyan=e0ffff lightgoldenrodyellow=fafad2 lightgray=d3d3d3 lightgreen=90ee90
lightgrey=d3d3d3 lightpink=ffb6c1 lightsalmon=ffa07a lightseagreen=20b2aa lightskyblue=87cefa
lightslategray=778899 lightslategrey=778899 lightsteelblue=b0c4de lightyellow=ffffe0
lime=00ff00 limegreen=32cd32 linen=faf0e6 magenta=ff00ff maroon=800000 mediumaquamarine=66cdaa
mediumblue=0000cd mediumorchid=ba55d3 mediumpurple=9370db mediumseagreen=3cb371
mediumslateblue=7b68ee mediumspringgreen=00fa9a mediumturquoise=48d1cc mediumvioletred=c71585
midnightblue=191970 mintcream=f5fffa mistyrose=ffe4e1 moccasin=ffe4b5 navajowhite=ffdead
navy=000080 navyblue=000080 oldlace=fdf5e6 olive=808000 olivedrab=6b8e23 orange=ffa500
orangered=ff4500 orchid=da70d6 palegoldenrod=eee8aa palegreen=98fb98 paleturquoise=afeeee
palevioletred=db7093 papayawhip=ffefd5 peachpuff=ffdab9 peru=cd853f pink=ffc0cb plum=dda0dd
powderblue=b0e0e6 purple=800080 rebeccapurple=663399 red=ff0000 rosybrown=bc8f8f
royalblue=4169e1 saddlebrown=8b4513 salmon=fa8072 sandybrown=f4a460 seagreen=2e8b57
seashell=fff5ee sienna=a0522d silver=c0c0c0 skyblue=87ceeb slateblue=6a5acd slategray=708090
slategrey=708090 snow=fffafa springgreen=00ff7f steelblue=4682b4 tan=d2b48c teal=008080
thistle=d8bfd8 tomato=ff6347 turquoise=40e0d0 violet=ee82ee wheat=f5deb3 white=ffffff
whitesmoke=f5f5f5 yellow=ffff00 yellowgreen=9acd32
"""


def _table() -> dict[str, tuple[int, int, int]]:
    table = {}
    for item in OMOST_COLOURS.split():
        name, hexa = item.split("=")
        table[name] = (int(hexa[0:2], 16), int(hexa[2:4], 16), int(hexa[4:6], 16))
    return table


def canvas_code(global_args: str, *locals_: str) -> str:
    lines = ["canvas = Canvas()", f"canvas.set_global_description({global_args})"]
    lines += [f"canvas.add_local_description({a})" for a in locals_]
    return "\n".join(lines) + "\n"


GLOBAL = (
    "description='A room', detailed_descriptions=['Warm light'], tags='room', HTML_web_color_name='white'"
)


def local(**changes: str) -> str:
    args = {
        "location": "'in the center'",
        "offset": "'no offset'",
        "area": "'a small square area'",
        "distance_to_viewer": "2.0",
        "description": "'A cat'",
        "detailed_descriptions": "['Black fur']",
        "tags": "'cat'",
        "atmosphere": "'calm'",
        "style": "'photo'",
        "quality_meta": "'sharp'",
        "HTML_web_color_name": "'black'",
    } | changes
    return ", ".join(f"{k}={v}" for k, v in args.items())


# --- 7. the colour table -------------------------------------------------------------------------


def test_the_colour_table_is_omosts_names_and_values() -> None:
    expected = _table()
    assert len(expected) == 149
    assert expected == COLORS
    assert COLORS["rebeccapurple"] == (102, 51, 153)
    assert COLORS["gray"] == COLORS["grey"] == (128, 128, 128)
    assert COLORS["navyblue"] == COLORS["navy"] == (0, 0, 128)


def test_rebeccapurple_is_read_as_itself_without_a_correction() -> None:
    canvas = parse(canvas_code(GLOBAL.replace("'white'", "'RebeccaPurple'")))
    assert canvas.global_description.color == "rebeccapurple"
    assert process(canvas).regions[0].rgb == (102, 51, 153)
    # lower-casing is reported, as every change is; the colour itself is not changed
    assert [(c.given, c.corrected) for c in canvas.corrections] == [("RebeccaPurple", "rebeccapurple")]


# --- 8. near-miss names: ties resolve as difflib.get_close_matches(n=1) does ---------------------


@pytest.mark.parametrize(
    ("given", "allowed", "expected"),
    [
        # equal scores (0.5 and 4/7): the candidate that sorts last wins, as in Omost
        ("ayyy", tuple(COLORS), "navy"),  # navy and gray both score 0.5
        ("lbe", tuple(COLORS), "lime"),  # lime and blue both score 4/7
        ("tan ", tuple(COLORS), "tan"),
        # the ratio is taken with the candidate first, as get_close_matches does
        ("a medium-sized rectangular area", tuple(AREAS), "a medium-sized square area"),
        ("gren", tuple(COLORS), "green"),
    ],
)
def test_near_miss_names_resolve_as_in_omost(given: str, allowed: tuple[str, ...], expected: str) -> None:
    name, changed = closest_name(given, allowed, "name")
    assert (name, changed) == (expected, True)


def test_a_tie_broken_colour_is_still_reported_as_a_correction() -> None:
    canvas = parse(canvas_code(GLOBAL, local(HTML_web_color_name="'ayyy'")))
    assert canvas.regions[0].color == "navy"
    assert [str(c) for c in canvas.corrections] == ["region 1: HTML_web_color_name 'ayyy' -> 'navy' (line 3)"]


def test_names_below_half_similarity_are_still_refused() -> None:
    with pytest.raises(CanvasError, match="not recognised"):
        parse(canvas_code(GLOBAL.replace("'white'", "'zzzzqqq'")))


# --- 9. prompt strings ----------------------------------------------------------------------------


def test_empty_and_punctuation_only_prompts_become_a_dot_suffix() -> None:
    canvas = parse(canvas_code(GLOBAL.replace("tags='room'", "tags=''"), local(tags="' , '", style="'...'")))
    layout = process(canvas)
    assert layout.regions[0].suffixes == ("Warm light.", ".")
    assert layout.regions[1].suffixes == ("Black fur.", ".", "calm.", ".", "sharp.")


def test_an_empty_local_or_global_description_is_accepted() -> None:
    canvas = parse(canvas_code(GLOBAL.replace("'A room'", "''"), local(description="''")))
    layout = process(canvas)
    assert layout.regions[0].prefixes == (".",)
    assert layout.regions[1].prefixes == (".", ".")


def test_tabs_and_newlines_are_kept_inside_the_dot() -> None:
    canvas = parse(canvas_code(GLOBAL, local(description="'\\tA cat\\n'", tags="'cat\\t'")))
    region = process(canvas).regions[1]
    assert region.prefixes == ("A room.", "\tA cat\n.")
    assert region.suffixes[1] == "cat\t."


def test_the_dot_suffix_reaches_the_bag_tokens() -> None:
    """An empty tags string costs a "." token in the bag, as in Omost's encoding."""

    class Chars:
        """A stand-in tokenizer with one token per character: enough to count what a bag holds."""

        bos_id, eos_id, pad_id = 1, 2, 0

        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

    layout = process(parse(canvas_code(GLOBAL.replace("tags='room'", "tags=''"))))
    (bag,) = greedy_bags(layout.regions[0].prefixes, layout.regions[0].suffixes, Chars())  # type: ignore[arg-type]
    assert bytes(i for i in bag.input_ids if i > 2).decode() == "A room.Warm light.."


# --- 10. infinity --------------------------------------------------------------------------------


def test_infinite_distance_is_accepted_sorts_farthest_and_round_trips() -> None:
    code = canvas_code(
        GLOBAL,
        local(description="'near'", distance_to_viewer="1.0"),
        local(description="'far'", distance_to_viewer="1e999"),
    )
    canvas = parse(code)
    assert math.isinf(canvas.regions[1].distance_to_viewer)
    assert [r.description for r in process(canvas).regions[1:]] == ["far.", "near."]
    written = to_code(canvas)
    assert "distance_to_viewer=1e999," in written
    assert parse(written) == canvas


# --- 11. positional arguments ---------------------------------------------------------------------


def test_positional_arguments_bind_in_omosts_signature_order() -> None:
    positional = canvas_code(
        "'A room', ['Warm light'], 'room', 'white'",
        "'in the center', 'no offset', 'a small square area', 2.0, 'A cat', ['Black fur'], 'cat', "
        "'calm', 'photo', 'sharp', 'black'",
    )
    mixed = canvas_code(
        "'A room', ['Warm light'], tags='room', HTML_web_color_name='white'",
        "'in the center', 'no offset', 'a small square area', 2.0, description='A cat', "
        "detailed_descriptions=['Black fur'], tags='cat', atmosphere='calm', style='photo', "
        "quality_meta='sharp', HTML_web_color_name='black'",
    )
    keywords = canvas_code(GLOBAL, local())
    assert parse(positional) == parse(mixed) == parse(keywords)


def test_a_positional_argument_is_type_checked_by_its_position() -> None:
    with pytest.raises(CanvasError, match="distance_to_viewer must be a number") as info:
        parse(canvas_code(GLOBAL, "'in the center', 'no offset', 'a small square area', 'far'"))
    assert info.value.line == 3


# --- 12. two code blocks --------------------------------------------------------------------------


def test_the_first_of_two_python_blocks_is_the_canvas() -> None:
    first = canvas_code(GLOBAL, local(description="'first'"))
    second = canvas_code(GLOBAL, local(description="'second'"))
    answer = f"Here it is:\n```python\n{first}```\nor perhaps\n```python\n{second}```\n"
    assert parse(answer).regions[0].description == "first."
    assert find_code(answer).first_line == 3


def test_a_later_unclosed_block_does_not_hide_the_first() -> None:
    first = canvas_code(GLOBAL)
    answer = f"```python\n{first}```\nAnd a draft:\n```python\ncanvas = Canvas()\n"
    assert parse(answer).global_description.description == "A room."


# --- the deliberate differences (docs/omost-differences.md) ----------------------------------------


def test_deliberate_differences_still_hold() -> None:
    keywords = canvas_code(GLOBAL, local())
    # never executed: any other Python is refused with its line
    with pytest.raises(CanvasError, match="a variable name") as info:
        parse(keywords + "canvas.add_local_description(description=x)\n")
    assert info.value.line == 4
    # a fence without a language, bare code, and a tuple for a list are read
    assert parse(f"```\n{keywords}```") == parse(keywords)
    assert parse(keywords.replace("['Black fur']", "('Black fur',)")) == parse(keywords)
    # repeated spaces inside vocabulary names are collapsed before matching
    assert closest_name("in  the   center", ("in the center",), "location") == ("in the center", True)
