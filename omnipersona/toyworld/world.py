"""Scenes, concepts and the renderer of the toy world.

A scene is a place (a background) with up to three objects; an object is a shape, a colour, a
marking pattern, a size and a position. Positions are the four quadrants of the image and its
center; the center is only used when the object is alone, so objects never overlap. Rendering is
plain numpy: crisp shapes (4x4 supersampled coverage), a 1-px dark outline, markings on the
interior, and a background with its own base colour and texture. A seed adds small jitter
(object offset by one pixel, slight colour shifts); `seed=None` draws the canonical image.
Jitter is keyed by (seed, position slot), so an edit re-rendered with the same seed changes only
the pixels of what it edited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 130, 10),
    "yellow": (250, 225, 30),
    "green": (50, 200, 60),
    "cyan": (40, 210, 230),
    "blue": (30, 70, 235),
    "purple": (150, 50, 200),
    "pink": (255, 140, 210),
}
PATTERNS = ("plain", "dotted", "striped", "ringed")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
QUADRANTS = POSITIONS[:4]
PLACES = ("beach", "forest", "city", "snow", "desert", "night")
# Text-only facts of a concept: its toy and its friend are a colour plus one of these nouns.
TOYS = ("ball", "box", "kite", "drum", "boat", "car")
FRIENDS = ("cat", "dog", "bird", "fox", "frog", "owl")

MAX_OBJECTS = 3
# Object box side as a fraction of the image side (14 px and 9 px at 32x32).
SIZE_FRACTION = {"large": 14 / 32, "small": 9 / 32}
# Position -> (x, y) centre as a fraction of the image side.
POSITION_CENTRE = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
OUTLINE = np.array((25.0, 25.0, 25.0))
LIGHT_MARK = np.array((250.0, 250.0, 250.0))


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    pattern: str = "plain"
    size: str = "large"
    position: str = "center"

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.shape, SHAPES, "shape"), (self.colour, COLOURS, "colour"), (self.pattern, PATTERNS, "pattern"),
            (self.size, SIZES, "size"), (self.position, POSITIONS, "position"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; known: {', '.join(allowed)}")

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What makes an object (or a concept) itself: everything but where it stands."""
        return (self.shape, self.colour, self.pattern, self.size)


@dataclass(frozen=True)
class Scene:
    place: str
    objects: tuple[ObjectSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.place not in PLACES:
            raise ValueError(f"unknown place {self.place!r}; known: {', '.join(PLACES)}")
        object.__setattr__(self, "objects", tuple(self.objects))
        positions = [o.position for o in self.objects]
        if len(set(positions)) != len(positions):
            raise ValueError(f"two objects share a position: {positions}")
        if len(self.objects) > 1 and "center" in positions:
            raise ValueError("the center position is only for an object that is alone")
        if len(self.objects) > len(QUADRANTS):
            raise ValueError(f"at most {len(QUADRANTS)} objects fit in a scene")

    def free_positions(self) -> tuple[str, ...]:
        """Where one more object could go (quadrants only once the scene is not empty)."""
        if not self.objects:
            return POSITIONS
        taken = {o.position for o in self.objects}
        if "center" in taken:
            return ()
        return tuple(p for p in QUADRANTS if p not in taken)


@dataclass(frozen=True)
class Concept:
    """A fixed identity (what it looks like) plus facts that exist only as text."""

    shape: str
    colour: str
    pattern: str
    size: str
    home: str  # a place
    toy: tuple[str, str]  # (colour, toy noun)
    friend: tuple[str, str]  # (colour, animal noun)

    @property
    def identity(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.pattern, self.size)

    def spec(self, position: str = "center") -> ObjectSpec:
        return ObjectSpec(self.shape, self.colour, self.pattern, self.size, position)

    def matches(self, obj: ObjectSpec) -> bool:
        return obj.identity == self.identity

    def in_scene(self, scene: Scene) -> bool:
        return any(self.matches(o) for o in scene.objects)


# -- sampling ---------------------------------------------------------------------------------
def _choice(rng: np.random.Generator, options) -> str:
    options = tuple(options)
    return options[int(rng.integers(len(options)))]


def random_identity(rng: np.random.Generator) -> tuple[str, str, str, str]:
    return (_choice(rng, SHAPES), _choice(rng, COLOURS), _choice(rng, PATTERNS), _choice(rng, SIZES))


def random_object(rng: np.random.Generator, position: str, avoid: set | frozenset = frozenset()) -> ObjectSpec:
    """A random object at `position` whose identity is not in `avoid`."""
    while True:
        ident = random_identity(rng)
        if ident not in avoid:
            return ObjectSpec(*ident, position=position)


def lookalike(identity: tuple[str, str, str, str], rng: np.random.Generator, position: str,
              n_diff: int = 1) -> ObjectSpec:
    """An object that differs from `identity` in exactly `n_diff` of shape/colour/pattern/size
    (a hard negative)."""
    pools = (SHAPES, tuple(COLOURS), PATTERNS, SIZES)
    which = rng.choice(4, size=n_diff, replace=False)
    values = list(identity)
    for i in which:
        values[i] = _choice(rng, [v for v in pools[i] if v != identity[i]])
    return ObjectSpec(*values, position=position)


def _positions(rng: np.random.Generator, n: int) -> list[str]:
    if n == 1:
        return [_choice(rng, POSITIONS)]
    return [QUADRANTS[i] for i in rng.choice(len(QUADRANTS), size=n, replace=False)]


def random_scene(rng: np.random.Generator, n_objects: int | None = None, place: str | None = None,
                 max_objects: int = MAX_OBJECTS) -> Scene:
    """A random place with 1..max_objects objects of distinct identities."""
    n = int(rng.integers(1, max_objects + 1)) if n_objects is None else n_objects
    place = place or _choice(rng, PLACES)
    objects: list[ObjectSpec] = []
    for pos in _positions(rng, n):
        objects.append(random_object(rng, pos, avoid={o.identity for o in objects}))
    return Scene(place, tuple(objects))


def random_concept(rng: np.random.Generator) -> Concept:
    shape, colour, pattern, size = random_identity(rng)
    return Concept(
        shape, colour, pattern, size,
        home=_choice(rng, PLACES),
        toy=(_choice(rng, COLOURS), _choice(rng, TOYS)),
        friend=(_choice(rng, COLOURS), _choice(rng, FRIENDS)),
    )


def concept_scene(concept: Concept, rng: np.random.Generator, place: str | None = None, companions: int = 0,
                  lookalike_prob: float = 0.5) -> Scene:
    """The concept (always `objects[0]`) in a scene, with `companions` distractor objects that
    differ from it in at least one identity attribute (look-alikes with `lookalike_prob`)."""
    if companions > MAX_OBJECTS - 1:
        raise ValueError(f"at most {MAX_OBJECTS - 1} companions")
    positions = _positions(rng, companions + 1)
    objects = [concept.spec(positions[0])]
    for pos in positions[1:]:
        taken = {o.identity for o in objects}
        if rng.random() < lookalike_prob:
            obj = lookalike(concept.identity, rng, pos, n_diff=1)
            if obj.identity in taken:
                obj = random_object(rng, pos, avoid=taken)
        else:
            obj = random_object(rng, pos, avoid=taken)
        objects.append(obj)
    return Scene(place or _choice(rng, PLACES), tuple(objects))


def negative_scene(concept: Concept, rng: np.random.Generator, hard: bool = True, place: str | None = None,
                   n_objects: int | None = None) -> Scene:
    """A scene without the concept: with `hard`, one object is a look-alike (one attribute off)."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    positions = _positions(rng, n)
    objects: list[ObjectSpec] = []
    for i, pos in enumerate(positions):
        avoid = {o.identity for o in objects} | {concept.identity}
        obj = lookalike(concept.identity, rng, pos) if hard and i == 0 else random_object(rng, pos, avoid)
        if obj.identity in avoid:
            obj = random_object(rng, pos, avoid)
        objects.append(obj)
    return Scene(place or _choice(rng, PLACES), tuple(objects))


# -- rendering --------------------------------------------------------------------------------
def _rng(seed: int | None, slot: int) -> np.random.Generator | None:
    return None if seed is None else np.random.default_rng([int(seed) & 0xFFFFFFFF, slot])


def _star_polygon(points: int = 5, inner: float = 0.46) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles) + 0.1], axis=1)


_STAR = _star_polygon()


def _in_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    inside = np.zeros(u.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % n]
        crosses = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test on coordinates normalised to [-1, 1] over the object's box (y down)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "triangle":
        return (v <= 0.85) & (au <= (v + 0.95) / 1.8)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "star":
        return _in_polygon(u, v, _STAR)
    raise ValueError(f"unknown shape {shape!r}")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of a 32-px image (so textures scale with `size`)."""
    c = (np.arange(size) + 0.5) * 32.0 / size
    return np.meshgrid(c, c)  # xx, yy


def _background(place: str, size: int) -> np.ndarray:
    xx, yy = _grid(size)
    img = np.zeros((size, size, 3))

    def paint(mask: np.ndarray, rgb: tuple[int, int, int]) -> None:
        img[mask] = rgb

    everywhere = np.ones_like(xx, dtype=bool)
    if place == "beach":  # sea band, white foam line, sand
        paint(everywhere, (238, 214, 160))
        paint(yy < 11, (40, 120, 200))
        paint((yy >= 11) & (yy < 12), (235, 240, 245))
    elif place == "forest":  # green with dark vertical trunks
        paint(everywhere, (45, 125, 55))
        paint(xx % 8 < 2.5, (70, 50, 30))
    elif place == "city":  # grey skyline of alternating buildings under a pale sky
        paint(everywhere, (180, 195, 215))
        roofs = (9, 5, 12, 7, 3, 10, 6, 8)
        band = (xx // 4).astype(int) % len(roofs)
        shade = np.where(band % 2 == 0, 95, 125)
        building = yy >= np.take(roofs, band)
        img[building] = np.stack([shade, shade, shade + 12], axis=-1)[building]
    elif place == "snow":  # pale blue sky, white ground
        paint(everywhere, (246, 248, 252))
        paint(yy < 10, (190, 210, 240))
    elif place == "desert":  # tan sand with darker dune lines under a warm sky
        paint(everywhere, (205, 165, 100))
        paint(yy < 8, (250, 228, 170))
        dunes = ((yy + 2.0 * np.sin(xx * 2 * np.pi / 16)) % 6 < 1.4) & (yy >= 8)
        paint(dunes, (165, 120, 65))
    elif place == "night":  # dark navy with a few fixed stars and a moon
        paint(everywhere, (15, 20, 60))
        star_rng = np.random.default_rng(12345)
        sx, sy = star_rng.integers(0, 32, size=(2, 14))
        for x, y in zip(sx, sy, strict=True):
            paint((np.abs(xx - x - 0.5) < 0.6) & (np.abs(yy - y - 0.5) < 0.6), (235, 235, 200))
        paint((xx - 27) ** 2 + (yy - 5) ** 2 <= 9, (240, 240, 215))
    else:
        raise ValueError(f"unknown place {place!r}")
    return img


def _marking_colour(rgb: np.ndarray) -> np.ndarray:
    """Near-white on dark colours; on light ones a dark shade of the colour itself (not the black
    of the outline, so markings at the rim do not eat into the silhouette)."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return rgb * 0.4 if luminance > 140 else LIGHT_MARK


def _dilate(mask: np.ndarray, diagonal: bool = False) -> np.ndarray:
    """4-neighbour (or with `diagonal`, 8-neighbour) dilation."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    if diagonal:
        out[1:, 1:] |= mask[:-1, :-1]
        out[:-1, :-1] |= mask[1:, 1:]
        out[1:, :-1] |= mask[:-1, 1:]
        out[:-1, 1:] |= mask[1:, :-1]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


def _draw_object(img: np.ndarray, obj: ObjectSpec, rng: np.random.Generator | None,
                 marking_contrast: float = 1.0) -> None:
    size = img.shape[0]
    scale = size / 32.0
    side = max(3, int(round(SIZE_FRACTION[obj.size] * size)))
    fx, fy = POSITION_CENTRE[obj.position]
    dx, dy = (0, 0) if rng is None else rng.integers(-1, 2, size=2)
    x0 = int(round(fx * size - side / 2 + dx * scale))
    y0 = int(round(fy * size - side / 2 + dy * scale))
    colour = np.array(COLOURS[obj.colour], dtype=float)
    if rng is not None:
        colour = np.clip(colour + rng.uniform(-8, 8, size=3), 0, 255)

    # 4x4 supersampled coverage of the shape over its box.
    ss = 4
    sub = (np.arange(side * ss) + 0.5) / (side * ss) * 2 - 1
    su, sv = np.meshgrid(sub, sub)
    cover = shape_mask(obj.shape, su, sv).reshape(side, ss, side, ss).mean(axis=(1, 3))
    inside = cover >= 0.5
    # Pixel-centre coordinates for the markings.
    c = (np.arange(side) + 0.5) / side * 2 - 1
    u, v = np.meshgrid(c, c)
    ly, lx = np.mgrid[0:side, 0:side]
    period = max(2, int(round(4 * scale)))
    half = period // 2
    # Dots and stripes are phased so that one falls on the object's centre (thin shapes too).
    mid = (side - half) // 2
    if obj.pattern == "dotted":
        mark = ((lx - mid) % period < half) & ((ly - mid) % period < half)
    elif obj.pattern == "striped":
        mark = (ly - mid) % period < half
    elif obj.pattern == "ringed":
        r = np.sqrt(u * u + v * v)
        mark = (r >= 0.22) & (r <= 0.52)
    else:
        mark = np.zeros_like(inside)
    # Large fat shapes keep markings off their rim (the silhouette stays clean); small or thin
    # ones have too little interior for that.
    keep_rim = obj.pattern == "ringed" or (obj.size == "large" and obj.shape not in ("star", "cross"))
    mark &= _erode(inside) if keep_rim else inside

    # Paint onto a padded canvas so objects may touch the border safely.
    pad = 2
    canvas = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    full = np.zeros(canvas.shape[:2], dtype=bool)
    full_mark = np.zeros_like(full)
    ys, xs = slice(y0 + pad, y0 + pad + side), slice(x0 + pad, x0 + pad + side)
    full[ys, xs] = inside
    full_mark[ys, xs] = mark
    outline = _dilate(full, diagonal=True) & ~full
    for _ in range(max(1, int(round(scale))) - 1):
        outline = _dilate(outline | full, diagonal=True) & ~full
    canvas[outline] = OUTLINE
    canvas[full] = colour
    mark_colour = _marking_colour(colour)
    # Full contrast skips the blend so every render stays bit-exact with the ones weights were trained on.
    canvas[full_mark] = mark_colour if marking_contrast == 1.0 else colour + marking_contrast * (mark_colour - colour)
    img[:] = canvas[pad:-pad, pad:-pad]


def render(scene: Scene, size: int = 32, seed: int | None = None, marking_contrast: float = 1.0) -> Image.Image:
    """The scene as an RGB image; deterministic for a seed (None: no jitter at all).
    `marking_contrast` < 1 draws markings fainter (a blend toward the object's colour). The world's
    markings are full contrast; fainter ones are for probing judges on the faint ones generators
    draw (docs/benchmark/probe_judge.py)."""
    img = _background(scene.place, size)
    bg_rng = _rng(seed, 0)
    if bg_rng is not None:
        img = img + bg_rng.uniform(-6, 6, size=3)
    for obj in scene.objects:
        _draw_object(img, obj, _rng(seed, 1 + POSITIONS.index(obj.position)), marking_contrast)
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8))


def render_array(scene: Scene, size: int = 32, seed: int | None = None) -> np.ndarray:
    """`render` as a float array [size, size, 3] in [0, 1]."""
    return np.asarray(render(scene, size, seed), dtype=np.float32) / 255.0
