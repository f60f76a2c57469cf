"""The Canvas model: SPEC 2 boxes, SPEC 3 validation and corrections, SPEC 4 layout."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from omost_engine.canvas import (
    AREAS,
    COLORS,
    LOCATIONS,
    OFFSETS,
    CanvasError,
    box_for,
    clean_prompt,
    process,
)
from omost_engine.canvas_code import parse
from tests.seed import seed_answers


def test_spec_box_examples() -> None:
    assert box_for("on the left", "no offset", "a large horizontal area") == (15, 75, 0, 60)
    assert box_for("on the top-left", "slightly to the upper-left", "a small square area") == (0, 30, 0, 30)
    assert box_for("in the center", "no offset", "a large square area") == (10, 80, 10, 80)


def test_all_729_boxes_are_inside_the_grid_and_not_empty() -> None:
    boxes = {
        (loc, off, area): box_for(loc, off, area)
        for loc, off, area in itertools.product(LOCATIONS, OFFSETS, AREAS)
    }
    assert len(boxes) == 9 * 9 * 9
    for top, bottom, left, right in boxes.values():
        assert 0 <= top < bottom <= 90
        assert 0 <= left < right <= 90


def test_colours_include_both_grey_spellings_and_navyblue() -> None:
    assert COLORS["darkslategray"] == COLORS["darkslategrey"] == (47, 79, 79)
    assert COLORS["navyblue"] == (0, 0, 128)
    assert COLORS["firebrick"] == (178, 34, 34)
    assert len(COLORS) >= 148


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("A cat", "A cat."),
        (" a cat., ", "a cat."),
        ("tags, with, commas,", "tags, with, commas."),
        ("...", "."),
        ("", "."),
        (" ,. ", "."),
        ("\ta cat\n", "\ta cat\n."),  # only commas, dots and spaces are stripped (Omost)
        ("a cat\t.", "a cat\t."),
    ],
)
def test_clean_prompt(raw: str, clean: str) -> None:
    assert clean_prompt(raw) == clean
    assert clean_prompt(clean) == clean  # idempotent


def _one_region(**overrides: object) -> str:
    fields = {
        "location": "'in the center'",
        "offset": "'no offset'",
        "area": "'a small square area'",
        "distance_to_viewer": "1.0",
        "description": "'A cat'",
        "detailed_descriptions": "['A black cat.']",
        "tags": "'cat'",
        "atmosphere": "'calm'",
        "style": "'photo'",
        "quality_meta": "'sharp'",
        "HTML_web_color_name": "'black'",
    }
    fields.update({k: str(v) for k, v in overrides.items()})
    args = ", ".join(f"{k}={v}" for k, v in fields.items())
    return (
        "canvas = Canvas()\n"
        "canvas.set_global_description(description='A room', detailed_descriptions=[], tags='room', "
        "HTML_web_color_name='white')\n"
        f"canvas.add_local_description({args})\n"
    )


def test_near_miss_names_are_corrected_and_reported() -> None:
    canvas = parse(
        _one_region(
            location="'on the  Left'", area="'a large sqare area'", HTML_web_color_name="'darkslategrey2'"
        )
    )
    region = canvas.regions[0]
    assert (region.location, region.area, region.color) == (
        "on the left",
        "a large square area",
        "darkslategrey",
    )
    reported = {(c.field, c.given, c.corrected) for c in canvas.corrections}
    assert reported == {
        ("location", "on the  Left", "on the left"),
        ("area", "a large sqare area", "a large square area"),
        ("HTML_web_color_name", "darkslategrey2", "darkslategrey"),
    }
    assert all(c.where == "region 1" and c.line == 3 for c in canvas.corrections)


def test_exact_names_need_no_correction() -> None:
    for answer in seed_answers():
        assert parse(answer).corrections == ()


def test_hopeless_names_are_errors_listing_the_choices() -> None:
    with pytest.raises(CanvasError) as e:
        parse(_one_region(location="'xyzzy'"))
    assert e.value.line == 3
    assert "'xyzzy'" in str(e.value) and "'in the center'" in str(e.value)
    with pytest.raises(CanvasError, match="colour"):
        parse(_one_region(HTML_web_color_name="'qqqqqqqqqqqqqqq'"))


def test_seed_layout_first_turn_by_hand() -> None:
    layout = process(parse(seed_answers()[0]))
    # global first, then far to near: 8.0 pterodactyl, 7.0 triceratops, 6.5 stegosaurus, 5.0 centre, 4.5 fallen
    assert [r.distance_to_viewer for r in layout.regions] == [None, 8.0, 7.0, 6.5, 5.0, 4.5]
    assert [r.box for r in layout.regions] == [
        (0, 90, 0, 90),
        (0, 35, 25, 85),  # on the top (45,15) + right (10,0) -> (55,15); small horizontal 60x40
        (0, 75, 50, 90),  # on the right (75,45) + upper (0,-10) -> (75,35); medium vertical 50x80
        (15, 90, 0, 40),  # on the left (15,45) + lower (0,10) -> (15,55); medium vertical 50x80
        (10, 80, 10, 80),  # centre, large square 70x70
        (40, 90, 0, 50),  # bottom-left (15,75) + upper-right (10,-10) -> (25,65); small square 50x50
    ]
    assert [r.color for r in layout.regions] == [
        "darkslategray",
        "slategray",
        "darkgreen",
        "saddlebrown",
        "darkolivegreen",
        "dimgray",
    ]
    assert layout.regions[0].rgb == (47, 79, 79)
    assert layout.regions[3].rgb == (139, 69, 19)


def test_seed_prefix_tree() -> None:
    layout = process(parse(seed_answers()[1]))
    g, meteor = layout.regions[0], layout.regions[1]
    assert g.prefixes == ("An intense battle scene featuring warriors, dinosaurs, and meteorites.",)
    assert len(g.suffixes) == 7 + 1  # 7 detailed descriptions + tags
    assert g.suffixes[-1].startswith("battle, warriors, dinosaurs") and g.suffixes[-1].endswith(
        "destruction."
    )
    assert meteor.prefixes == (g.prefixes[0], "Meteorites crashing into the ground.")
    # local: own detailed descriptions, then tags, atmosphere, style, quality_meta; nothing global
    assert len(meteor.suffixes) == 5 + 4
    assert meteor.suffixes[5].startswith("meteorites, crashing")
    assert meteor.suffixes[-3:] == (
        "The atmosphere is one of danger and unpredictability, with a sense of chaotic destruction.",
        "The style is dramatic and intense, with a focus on the destructive force of the meteorites.",
        "High-quality depiction with dynamic textures and dramatic lighting.",
    )
    assert not set(g.suffixes[:-1]) & set(meteor.suffixes)


def test_equal_distances_keep_written_order() -> None:
    code = _one_region() + (
        "canvas.add_local_description(location='on the left', offset='no offset', area='a small square area', "
        "distance_to_viewer=1, description='A dog', detailed_descriptions=[], tags='', atmosphere='', style='', "
        "quality_meta='', HTML_web_color_name='brown')\n"
    )
    layout = process(parse(code))
    assert [r.description for r in layout.regions[1:]] == ["A cat.", "A dog."]
    # Omost keeps empty prompts: each becomes a "." suffix in the region's bags.
    assert layout.regions[2].suffixes == (".", ".", ".", ".")


def test_colour_sketch_blends_far_to_near() -> None:
    layout = process(parse(seed_answers()[0]))
    sketch = layout.color_sketch
    assert sketch.shape == (90, 90, 3)
    global_rgb = np.array(COLORS["darkslategray"], dtype=np.float32)
    np.testing.assert_allclose(sketch[89, 89], global_rgb)  # bottom-right corner: no region covers it
    # row 70, column 60: covered by the triceratops box (far), then the centre box (near)
    tri = np.array(COLORS["darkgreen"], dtype=np.float32)
    centre = np.array(COLORS["darkolivegreen"], dtype=np.float32)
    after_tri = 0.7 * tri + 0.3 * global_rgb
    np.testing.assert_allclose(sketch[70, 60], 0.7 * centre + 0.3 * after_tri, rtol=1e-5)
