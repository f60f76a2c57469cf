"""The layout preview: what a canvas will put where, drawn before any GPU time is spent.

Boxes are painted far to near in their colours over the global colour (the same 0.7/0.3 blend as
the colour sketch of SPEC.md section 4), outlined, and labelled with each region's short
description. Labels are drawn after all boxes so a near box never hides a far box's name; a
label that would collide with one already placed moves down inside its box.

This module knows nothing of models, GPUs or chats.
"""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from omost_engine.canvas import GRID, Layout, LayoutRegion

PREVIEW_LONG_SIDE = 768


def preview_size(width: int, height: int, long_side: int = PREVIEW_LONG_SIDE) -> tuple[int, int]:
    """The preview's pixel size: the requested aspect ratio with its long side `long_side`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _pixel_box(region: LayoutRegion, width: int, height: int) -> tuple[int, int, int, int]:
    top, bottom, left, right = region.box
    return (
        round(left * width / GRID),
        round(top * height / GRID),
        round(right * width / GRID),
        round(bottom * height / GRID),
    )


def _wrap(
    text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: int, max_lines: int
) -> list[str]:
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= max_width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
            if len(lines) > max_lines:
                break  # the rest is cut anyway: no need to measure it
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".,") + "…"
    # a single word wider than the box is cut with an ellipsis
    return [_fit(line, font, max_width) for line in lines]


def _fit(line: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: int) -> str:
    if font.getlength(line) <= max_width:
        return line
    while line and font.getlength(line + "…") > max_width:
        line = line[:-1]
    return line + "…"


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def render_layout_preview(
    layout: Layout, width: int = 896, height: int = 1152, long_side: int = PREVIEW_LONG_SIDE
) -> Image.Image:
    """Draw the layout at the aspect ratio of a `width` x `height` image, long side `long_side`."""
    w, h = preview_size(width, height, long_side)
    image = Image.new("RGB", (w, h), layout.regions[0].rgb)
    for region in layout.regions[1:]:  # far to near
        x0, y0, x1, y1 = _pixel_box(region, w, h)
        if x1 <= x0 or y1 <= y0:
            continue
        patch = Image.new("RGB", (x1 - x0, y1 - y0), region.rgb)
        under = image.crop((x0, y0, x1, y1))
        image.paste(Image.blend(under, patch, 0.7), (x0, y0))
        ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), outline=_text_color(region.rgb), width=2)

    draw = ImageDraw.Draw(image)
    font_size = max(12, round(min(w, h) / 30))
    font = _font(font_size)
    pad = max(2, font_size // 4)
    line_height = font_size + pad
    placed: list[tuple[int, int, int, int]] = []
    for number, region in enumerate(layout.regions):
        x0, y0, x1, y1 = _pixel_box(region, w, h)
        label_width = max(font_size * 3, x1 - x0 - 4 * pad)
        prefix = "global: " if region.kind == "global" else f"{number}. "
        lines = _wrap(prefix + region.short_description.rstrip("."), font, label_width - 2 * pad, 2)
        box_w = max(int(font.getlength(line)) for line in lines) + 2 * pad
        box_h = len(lines) * line_height + pad
        lx, ly = x0 + pad, y0 + pad
        while any(_overlaps((lx, ly, lx + box_w, ly + box_h), p) for p in placed) and ly + box_h < y1:
            ly += line_height
        lx, ly = min(lx, w - box_w), min(ly, h - box_h)
        rect = (lx, ly, lx + box_w, ly + box_h)
        placed.append(rect)
        fg = _text_color(region.rgb)
        bg = (255, 255, 255) if fg == (0, 0, 0) else (0, 0, 0)
        draw.rectangle(rect, fill=region.rgb, outline=bg)
        for i, line in enumerate(lines):
            draw.text((lx + pad, ly + pad // 2 + i * line_height), line, fill=fg, font=font)
    return image
