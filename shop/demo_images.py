"""Placeholder product photos for the demo data, drawn with Pillow (nothing is downloaded).

Each picture is a simple flat illustration of the kind of product (a bag of beans, a kettle,
a cup...) on a soft two-tone background whose hue comes from the product's name, so the
catalog looks like a shop and not like a test page. Drawn at twice the size and scaled
down, which smooths the edges (Pillow's shapes are not antialiased).
"""

import colorsys
import hashlib
import io
import math

from PIL import Image, ImageDraw, ImageFilter

SIZE = 800
SCALE = 2
S = SIZE * SCALE


def _rgb(hue: float, saturation: float, lightness: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hls_to_rgb(hue % 1.0, lightness, saturation)
    return round(red * 255), round(green * 255), round(blue * 255)


# Hues that look good in pastel and in a deep shade: terracotta, caramel, mustard, sage, green,
# teal, blue, indigo, plum, rose.
HUES = [0.03, 0.08, 0.12, 0.22, 0.36, 0.47, 0.57, 0.68, 0.8, 0.93]


def _hue_of(name: str) -> float:
    return HUES[int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % len(HUES)]


class _Palette:
    def __init__(self, hue: float):
        self.background_top = _rgb(hue, 0.55, 0.93)
        self.background_bottom = _rgb(hue + 0.06, 0.45, 0.84)
        self.main = _rgb(hue, 0.45, 0.38)
        self.dark = _rgb(hue, 0.45, 0.24)
        self.light = _rgb(hue, 0.5, 0.7)
        self.accent = _rgb(hue + 0.5, 0.55, 0.55)
        self.cream = (250, 246, 238)
        self.steel = (176, 184, 194)
        self.steel_dark = (110, 118, 130)
        self.wood = (150, 96, 58)
        self.coffee = (92, 58, 36)


def _p(x: float, y: float) -> tuple[int, int]:
    """A point given in 0..1 units of the picture."""
    return round(x * S), round(y * S)


def _box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
    return (*_p(x0, y0), *_p(x1, y1))


def _width(units: float) -> int:
    return max(1, round(units * S))


def _background(palette: _Palette) -> Image.Image:
    top = Image.new("RGB", (S, S), palette.background_top)
    bottom = Image.new("RGB", (S, S), palette.background_bottom)
    # Smooth shapes are made at a quarter of the size (16 times less work), then scaled up.
    small = S // 4
    # A diagonal gradient: a vertical one, twice as large, turned and cut out of its middle.
    mask = Image.linear_gradient("L").resize((2 * small, 2 * small)).rotate(30)
    mask = mask.crop((small // 2, small // 2, small * 3 // 2, small * 3 // 2)).resize((S, S), Image.Resampling.BILINEAR)
    image = Image.composite(bottom, top, mask)
    # Two soft circles of light, and the shadow the object stands on.
    glow = Image.new("L", (small, small), 0)
    draw = ImageDraw.Draw(glow)
    draw.ellipse([coordinate // 4 for coordinate in _box(-0.15, -0.2, 0.55, 0.5)], fill=70)
    draw.ellipse([coordinate // 4 for coordinate in _box(0.6, 0.55, 1.2, 1.15)], fill=45)
    glow = glow.filter(ImageFilter.GaussianBlur(small // 12)).resize((S, S), Image.Resampling.BILINEAR)
    image = Image.composite(Image.new("RGB", (S, S), (255, 255, 255)), image, glow)
    shadow = Image.new("L", (small, small), 0)
    ImageDraw.Draw(shadow).ellipse([coordinate // 4 for coordinate in _box(0.2, 0.8, 0.8, 0.9)], fill=90)
    shadow = shadow.filter(ImageFilter.GaussianBlur(small // 40)).resize((S, S), Image.Resampling.BILINEAR)
    return Image.composite(Image.new("RGB", (S, S), palette.dark), image, shadow)


def _bean(draw: ImageDraw.ImageDraw, cx: float, cy: float, size: float, angle: float, fill, line) -> None:
    # An ellipse with the bean's curved crease, rotated by drawing it as a polygon.
    points = []
    for step in range(48):
        t = 2 * math.pi * step / 48
        x, y = math.cos(t) * size * 0.62, math.sin(t) * size
        points.append(_rotate(cx, cy, x, y, angle))
    draw.polygon(points, fill=fill)
    crease = [_rotate(cx, cy, math.sin(t) * size * 0.16, t / math.pi * size * 0.8, angle) for t in _range(-3, 3, 24)]
    draw.line(crease, fill=line, width=_width(size * 0.09))


def _range(start: float, stop: float, count: int) -> list[float]:
    return [start + (stop - start) * i / (count - 1) for i in range(count)]


def _rotate(cx: float, cy: float, x: float, y: float, angle: float) -> tuple[int, int]:
    cos, sin = math.cos(angle), math.sin(angle)
    return _p(cx + x * cos - y * sin, cy + x * sin + y * cos)


def _draw_bag(draw, palette) -> None:
    draw.polygon([_p(0.3, 0.26), _p(0.7, 0.26), _p(0.74, 0.84), _p(0.26, 0.84)], fill=palette.main)
    draw.rectangle(_box(0.3, 0.2, 0.7, 0.27), fill=palette.dark)  # The folded top.
    draw.rounded_rectangle(_box(0.35, 0.42, 0.65, 0.7), radius=_width(0.02), fill=palette.cream)
    _bean(draw, 0.5, 0.56, 0.075, 0.5, palette.coffee, palette.cream)
    for x in (0.36, 0.64):
        draw.line([_p(x, 0.3), _p(x + (0.02 if x > 0.5 else -0.02), 0.8)], fill=palette.dark, width=_width(0.006))


def _draw_beans(draw, palette) -> None:
    draw.ellipse(_box(0.2, 0.5, 0.8, 0.86), fill=palette.cream)  # A bowl seen from the side...
    draw.rectangle(_box(0.2, 0.5, 0.8, 0.68), fill=palette.background_bottom)
    draw.chord(_box(0.2, 0.42, 0.8, 0.86), 0, 180, fill=palette.main)
    for index, (x, y) in enumerate(
        [(0.36, 0.52), (0.47, 0.47), (0.58, 0.51), (0.42, 0.58), (0.55, 0.59), (0.66, 0.56)]
    ):
        _bean(draw, x, y, 0.06, 0.4 + index * 0.9, palette.coffee, (60, 38, 24))


def _draw_cup(draw, palette, *, tall: bool = False) -> None:
    top, bottom = (0.3, 0.82) if tall else (0.44, 0.8)
    draw.ellipse(_box(0.64, top + 0.08, 0.8, top + 0.26), outline=palette.main, width=_width(0.035))  # Handle.
    draw.rounded_rectangle(_box(0.28, top, 0.68, bottom), radius=_width(0.08), fill=palette.main)
    draw.ellipse(_box(0.28, top - 0.04, 0.68, top + 0.05), fill=palette.dark)
    draw.ellipse(_box(0.31, top - 0.025, 0.65, top + 0.035), fill=palette.coffee)
    draw.rectangle(_box(0.28, (top + bottom) / 2, 0.68, (top + bottom) / 2 + 0.04), fill=palette.light)
    for x in (0.39, 0.48, 0.57):  # Steam.
        wave = [_p(x + 0.02 * math.sin(t * 3), top - 0.08 - t * 0.05) for t in _range(0, 2.2, 20)]
        draw.line(wave, fill=palette.cream, width=_width(0.014))


def _draw_kettle(draw, palette) -> None:
    draw.polygon([_p(0.3, 0.8), _p(0.7, 0.8), _p(0.64, 0.42), _p(0.36, 0.42)], fill=palette.steel)
    draw.ellipse(_box(0.36, 0.38, 0.64, 0.46), fill=palette.steel_dark)
    draw.ellipse(_box(0.46, 0.33, 0.54, 0.39), fill=palette.dark)  # Lid knob.
    # A gooseneck: out of the foot of the body, bending away and up.
    spout = [_p(0.34 - 0.16 * math.sin(t * math.pi / 2), 0.74 - 0.4 * t) for t in _range(0, 1, 24)]
    draw.line(spout, fill=palette.steel_dark, width=_width(0.03), joint="curve")
    draw.arc(_box(0.56, 0.44, 0.82, 0.74), 270, 90, fill=palette.main, width=_width(0.045))
    draw.rectangle(_box(0.3, 0.76, 0.7, 0.8), fill=palette.main)


def _draw_dripper(draw, palette) -> None:
    draw.rounded_rectangle(_box(0.26, 0.66, 0.74, 0.82), radius=_width(0.05), fill=palette.cream)  # A cup below.
    draw.rectangle(_box(0.24, 0.6, 0.76, 0.64), fill=palette.dark)
    draw.polygon([_p(0.24, 0.3), _p(0.76, 0.3), _p(0.56, 0.6), _p(0.44, 0.6)], fill=palette.main)
    draw.ellipse(_box(0.24, 0.26, 0.76, 0.34), fill=palette.light)
    for x in (0.38, 0.5, 0.62):
        draw.line([_p(x, 0.36), _p(0.5 + (x - 0.5) * 0.35, 0.56)], fill=palette.dark, width=_width(0.006))


def _draw_filters(draw, palette) -> None:
    for offset in (0.08, 0.04, 0.0):
        draw.polygon(
            [
                _p(0.24 + offset, 0.34 + offset),
                _p(0.72 + offset, 0.34 + offset),
                _p(0.58 + offset, 0.78),
                _p(0.38 + offset, 0.78),
            ],
            fill=palette.cream,
            outline=palette.steel_dark,
            width=_width(0.005),
        )


def _draw_grinder(draw, palette) -> None:
    draw.polygon([_p(0.36, 0.2), _p(0.64, 0.2), _p(0.58, 0.38), _p(0.42, 0.38)], fill=palette.light)  # Hopper.
    draw.rounded_rectangle(_box(0.32, 0.36, 0.68, 0.82), radius=_width(0.04), fill=palette.main)
    draw.rounded_rectangle(_box(0.38, 0.6, 0.62, 0.76), radius=_width(0.02), fill=palette.dark)  # Grounds bin.
    draw.ellipse(_box(0.45, 0.44, 0.55, 0.54), fill=palette.steel)
    draw.line([_p(0.5, 0.49), _p(0.53, 0.46)], fill=palette.dark, width=_width(0.008))


def _draw_bottle(draw, palette) -> None:
    draw.rounded_rectangle(_box(0.38, 0.26, 0.62, 0.84), radius=_width(0.06), fill=palette.light)
    draw.rounded_rectangle(_box(0.4, 0.44, 0.6, 0.82), radius=_width(0.04), fill=palette.coffee)  # Cold brew.
    draw.rounded_rectangle(_box(0.42, 0.18, 0.58, 0.28), radius=_width(0.02), fill=palette.dark)


def _draw_scale(draw, palette) -> None:
    draw.rounded_rectangle(_box(0.2, 0.56, 0.8, 0.8), radius=_width(0.04), fill=palette.dark)
    draw.rounded_rectangle(_box(0.24, 0.52, 0.76, 0.6), radius=_width(0.03), fill=palette.steel)
    draw.rounded_rectangle(_box(0.38, 0.64, 0.62, 0.74), radius=_width(0.015), fill=(30, 40, 36))
    for index in range(4):  # Digits on the display.
        x = 0.41 + index * 0.05
        draw.rectangle(_box(x, 0.665, x + 0.03, 0.715), fill=(120, 230, 160))


def _draw_tamper(draw, palette) -> None:
    draw.rounded_rectangle(_box(0.42, 0.2, 0.58, 0.6), radius=_width(0.08), fill=palette.wood)
    draw.rectangle(_box(0.46, 0.58, 0.54, 0.66), fill=palette.steel_dark)
    draw.rounded_rectangle(_box(0.3, 0.66, 0.7, 0.8), radius=_width(0.02), fill=palette.steel)


def _draw_box(draw, palette) -> None:
    draw.rounded_rectangle(_box(0.26, 0.44, 0.74, 0.82), radius=_width(0.04), fill=palette.main)
    draw.rectangle(_box(0.22, 0.44, 0.78, 0.5), fill=palette.dark)
    draw.line([_p(0.3, 0.5), _p(0.7, 0.5)], fill=palette.steel, width=_width(0.02))
    draw.ellipse(_box(0.42, 0.34, 0.58, 0.48), fill=palette.coffee)  # A spent puck.


def _draw_tablets(draw, palette) -> None:
    draw.rounded_rectangle(_box(0.3, 0.3, 0.7, 0.82), radius=_width(0.05), fill=palette.main)
    draw.rounded_rectangle(_box(0.34, 0.46, 0.66, 0.66), radius=_width(0.02), fill=palette.cream)
    for x, y in ((0.24, 0.8), (0.76, 0.78), (0.7, 0.86)):
        draw.ellipse(_box(x - 0.05, y - 0.05, x + 0.05, y + 0.05), fill=(245, 247, 250), outline=palette.steel)


def _draw_apron(draw, palette) -> None:
    draw.line([_p(0.38, 0.22), _p(0.5, 0.15), _p(0.62, 0.22)], fill=palette.wood, width=_width(0.015))
    draw.polygon(
        [
            _p(0.38, 0.2),
            _p(0.62, 0.2),
            _p(0.64, 0.4),
            _p(0.74, 0.44),
            _p(0.7, 0.84),
            _p(0.3, 0.84),
            _p(0.26, 0.44),
            _p(0.36, 0.4),
        ],
        fill=palette.main,
    )
    draw.rounded_rectangle(_box(0.4, 0.56, 0.6, 0.68), radius=_width(0.015), outline=palette.dark, width=_width(0.008))


def _draw_frother(draw, palette) -> None:
    draw.rounded_rectangle(_box(0.45, 0.18, 0.55, 0.52), radius=_width(0.04), fill=palette.main)
    draw.line([_p(0.5, 0.52), _p(0.5, 0.74)], fill=palette.steel_dark, width=_width(0.012))
    draw.ellipse(_box(0.44, 0.72, 0.56, 0.78), outline=palette.steel_dark, width=_width(0.01))
    draw.ellipse(_box(0.485, 0.23, 0.515, 0.26), fill=palette.light)


def _draw_sampler(draw, palette) -> None:
    for x, shade in ((0.2, palette.light), (0.38, palette.main), (0.56, palette.dark)):
        draw.rounded_rectangle(_box(x, 0.36, x + 0.24, 0.82), radius=_width(0.02), fill=shade)
        draw.rectangle(_box(x, 0.32, x + 0.24, 0.38), fill=palette.coffee)
        draw.rounded_rectangle(_box(x + 0.04, 0.5, x + 0.2, 0.64), radius=_width(0.01), fill=palette.cream)


# Which drawing suits a product, by a word of its name; the first match wins.
_DRAWINGS = [
    ("sampler", _draw_sampler),
    ("decaf", _draw_bag),
    ("beans", _draw_bag),
    ("filters", _draw_filters),
    ("dripper", _draw_dripper),
    ("kettle", _draw_kettle),
    ("grinder", _draw_grinder),
    ("frother", _draw_frother),
    ("travel mug", lambda draw, palette: _draw_cup(draw, palette, tall=True)),
    ("cups", _draw_cup),
    ("bottle", _draw_bottle),
    ("scale", _draw_scale),
    ("tamper", _draw_tamper),
    ("knock box", _draw_box),
    ("tablets", _draw_tablets),
    ("apron", _draw_apron),
]


def draw_product_picture(name: str) -> Image.Image:
    """Draw the placeholder picture of a product called `name` (SIZE × SIZE, RGB)."""
    palette = _Palette(_hue_of(name))
    image = _background(palette)
    draw = ImageDraw.Draw(image)
    lowered = name.lower()
    drawing = next((function for word, function in _DRAWINGS if word in lowered), _draw_beans)
    drawing(draw, palette)
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def product_picture_png(name: str) -> bytes:
    """The placeholder picture of `name` as PNG bytes."""
    buffer = io.BytesIO()
    draw_product_picture(name).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
