"""Shapes, textures, clutter and drawing of the synthetic detection data set (see ``curation_core.synth``).

Every shape is a boolean mask over a patch given by the patch's pixel-centre coordinates ``u, v``
(float32 arrays of one shape, already rotated and divided by the object's radius ``r`` so that the
shape fits the unit disc). Textures work in pixels (``x, y`` offsets from the object centre, not
scaled) so that their period is a number of pixels. Randomness comes in as a ``numpy.random.Generator``
and is drawn in a fixed order. ``Canvas`` draws shapes patch by patch
(numpy on the patch around each shape, no per-pixel Python) and tracks the visible pixels of each object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Mask = np.ndarray  # bool, (h, w)

#: Half side of the square inscribed in the unit circle.
SQUARE_HALF = 1.0 / math.sqrt(2.0)
#: Texture kinds, by index: a solid shape has one colour, the others a pattern in a second colour.
TEXTURES = ("solid", "stripes", "checks", "dots")
SOLID, STRIPES, CHECKS, DOTS = range(len(TEXTURES))
#: Smallest texture period in pixels: below 3 px stripes alias into noise.
MIN_PERIOD_PX = 3.0
#: An annotated object keeps at least this fraction of its drawn pixels visible under later shapes.
MIN_VISIBLE_FRACTION = 0.5
#: An annotated object keeps at least this fraction of its shape inside the image (truncation), and
#: at least this many pixels.
MIN_INSIDE_FRACTION = 0.6
MIN_INSIDE_PX = 9
#: Positions tried before a shape is left out.
PLACEMENT_TRIES = 12
#: Least Euclidean RGB distance (0..255 scale) between a shape's colour and the mean of what it covers,
#: and between the two colours of a texture, so that shapes and textures stay visible.
MIN_CONTRAST = 70.0

_STAR_HALF = math.pi / 5.0  # half the angle between two star points
_TRIANGLE_NORMALS = np.array([[math.cos(a), math.sin(a)] for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)],
                             dtype=np.float32)


@dataclass(frozen=True)
class Shape:
    """A sampled shape: its mask function of unit coordinates and its area in units of ``r**2``.

    ``unit_area`` is the exact area of the shape inside the unit disc (used to turn a target pixel area
    into a radius); ``texture`` is the index in ``TEXTURES`` of the fill the shape's class prescribes,
    or ``None`` when the texture is a free nuisance.
    """

    kind: str
    mask: Callable[[np.ndarray, np.ndarray], Mask]
    unit_area: float
    texture: int | None = None


# ----------------------------------------------------------------------------------------------
# Object classes. Each sampler draws its parameters from ``rng`` (the disc draws nothing).


def disc(rng: np.random.Generator) -> Shape:
    return Shape("disc", lambda u, v: u * u + v * v <= 1.0, math.pi)


def square(rng: np.random.Generator) -> Shape:
    return Shape("square", lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF, 2.0)


def triangle(rng: np.random.Generator) -> Shape:
    """Equilateral triangle inscribed in the unit circle (inradius 1/2)."""

    def mask(u: np.ndarray, v: np.ndarray) -> Mask:
        n = _TRIANGLE_NORMALS
        return (u * n[0, 0] + v * n[0, 1] <= 0.5) & (u * n[1, 0] + v * n[1, 1] <= 0.5) & (u * n[2, 0] + v * n[2, 1] <= 0.5)

    return Shape("triangle", mask, 3.0 * math.sqrt(3.0) / 4.0)


def ring(rng: np.random.Generator) -> Shape:
    """Annulus with inner radius in [0.45, 0.65] of the outer one (clearly not a disc)."""
    inner2 = float(rng.uniform(0.45, 0.65)) ** 2

    def mask(u: np.ndarray, v: np.ndarray) -> Mask:
        rho2 = u * u + v * v
        return (rho2 <= 1.0) & (rho2 >= inner2)

    return Shape("ring", mask, math.pi * (1.0 - inner2))


def cross(rng: np.random.Generator) -> Shape:
    """Plus sign: two bars of half-width ``a`` in [0.2, 0.32] and half-length 0.94 (corners inside the unit disc)."""
    a = float(rng.uniform(0.2, 0.32))
    half = 0.94

    def mask(u: np.ndarray, v: np.ndarray) -> Mask:
        au, av = np.abs(u), np.abs(v)
        return ((au <= a) & (av <= half)) | ((av <= a) & (au <= half))

    return Shape("cross", mask, 8.0 * half * a - 4.0 * a * a)


def star(rng: np.random.Generator) -> Shape:
    """Five-point star: outer radius 1, inner radius in [0.38, 0.5].

    In polar coordinates folded into the wedge [0, pi/5] between an outer point P = (1, 0) and an
    inner point Q = ri (cos pi/5, sin pi/5), a point X is inside when n . X <= n . P with
    n = (ri sin pi/5, 1 - ri cos pi/5) the outward normal of the edge PQ.
    """
    ri = float(rng.uniform(0.38, 0.5))
    nx, ny = ri * math.sin(_STAR_HALF), 1.0 - ri * math.cos(_STAR_HALF)

    def mask(u: np.ndarray, v: np.ndarray) -> Mask:
        theta = np.arctan2(v, u)
        phi = np.abs(np.mod(theta, 2.0 * _STAR_HALF) - _STAR_HALF)  # angle to the nearest inner vertex
        phi = _STAR_HALF - phi  # angle to the nearest outer point, in [0, pi/5]
        rho = np.sqrt(u * u + v * v)
        return rho * (np.cos(phi) * nx + np.sin(phi) * ny) <= nx

    return Shape("star", mask, 5.0 * ri * math.sin(_STAR_HALF))


def with_texture(sampler: Callable[[np.random.Generator], Shape], texture: str) -> Callable[[np.random.Generator], Shape]:
    """A sampler whose shapes prescribe ``texture`` (one of ``TEXTURES``)."""
    index = TEXTURES.index(texture)

    def sample(rng: np.random.Generator) -> Shape:
        shape = sampler(rng)
        return Shape(shape.kind, shape.mask, shape.unit_area, index)

    return sample


# ----------------------------------------------------------------------------------------------
# Clutter: shapes that belong to no class. Each differs from every class by its outline.


def blob(rng: np.random.Generator) -> Shape:
    """Irregular blob: rho <= s (1 + sum_k a_k cos(k theta + phi_k)), harmonics 2, 3 and 4 (never 5)."""
    amp = rng.uniform(0.08, 0.2, 3) * rng.choice([0.0, 1.0], 3, p=[0.2, 0.8])
    amp[int(rng.integers(3))] = rng.uniform(0.18, 0.25)  # at least one strong lobe: not a disc
    phase = rng.uniform(0.0, 2.0 * math.pi, 3)
    scale = 1.0 / (1.0 + float(np.sum(amp)))  # the farthest point stays inside the unit disc

    def mask(u: np.ndarray, v: np.ndarray) -> Mask:
        theta = np.arctan2(v, u)
        edge = 1.0 + amp[0] * np.cos(2 * theta + phase[0]) + amp[1] * np.cos(3 * theta + phase[1])
        edge = edge + amp[2] * np.cos(4 * theta + phase[2])
        return u * u + v * v <= (scale * edge) ** 2

    return Shape("blob", mask, math.pi * scale**2 * (1.0 + 0.5 * float(np.sum(amp * amp))))


def segment(rng: np.random.Generator) -> Shape:
    """Thick line segment of half-width 0.04 to 0.12 and half-length 0.99 (corners inside the unit disc)."""
    w = float(rng.uniform(0.04, 0.12))
    return Shape("segment", lambda u, v: (np.abs(v) <= w) & (np.abs(u) <= 0.99), 4.0 * 0.99 * w)


def arc(rng: np.random.Generator) -> Shape:
    """Part of a ring spanning 60 to 230 degrees (a ring needs 360)."""
    inner2 = float(rng.uniform(0.5, 0.75)) ** 2
    span = float(rng.uniform(math.pi / 3, 1.28 * math.pi))

    def mask(u: np.ndarray, v: np.ndarray) -> Mask:
        rho2 = u * u + v * v
        return (rho2 <= 1.0) & (rho2 >= inner2) & (np.abs(np.arctan2(v, u)) <= span / 2)

    return Shape("arc", mask, span / 2 * (1.0 - inner2))


def half_disc(rng: np.random.Generator) -> Shape:
    """Disc cut by a chord at distance -0.2 to 0.25 from the centre."""
    cut = float(rng.uniform(-0.2, 0.25))
    area = math.acos(cut) - cut * math.sqrt(1.0 - cut * cut)  # circular segment beyond the chord
    return Shape("half_disc", lambda u, v: (u * u + v * v <= 1.0) & (v >= cut), area)


def ellipse(rng: np.random.Generator) -> Shape:
    """Ellipse of aspect ratio 1.7 to 3 (a disc has 1)."""
    b = 1.0 / float(rng.uniform(1.7, 3.0))
    return Shape("ellipse", lambda u, v: u * u + (v / b) ** 2 <= 1.0, math.pi * b)


def rectangle(rng: np.random.Generator) -> Shape:
    """Rectangle of aspect ratio 1.8 to 3.5 inscribed in the unit circle (a square has 1)."""
    aspect = float(rng.uniform(1.8, 3.5))
    hx = 1.0 / math.sqrt(1.0 + 1.0 / aspect**2)
    hy = hx / aspect
    return Shape("rectangle", lambda u, v: (np.abs(u) <= hx) & (np.abs(v) <= hy), 4.0 * hx * hy)


#: Clutter samplers; ``noise`` patches reuse ``blob`` with a per-pixel random fill.
CLUTTER = {"blob": blob, "segment": segment, "arc": arc, "half_disc": half_disc, "ellipse": ellipse,
           "rectangle": rectangle, "noise": blob}


# ----------------------------------------------------------------------------------------------
# Textures


@dataclass(frozen=True)
class Texture:
    """A periodic pattern: ``second(x, y)`` is True where the second colour shows.

    ``x, y`` are pixel offsets from the object centre (float32, broadcastable). The pattern is rotated
    by ``angle``, has ``period`` pixels and phases in [0, 1) periods.
    """

    kind: int
    angle: float
    period: float
    phase: tuple[float, float]
    fill: float  # stripes: duty cycle; dots: dot radius in periods; checks: unused

    def second(self, x: np.ndarray, y: np.ndarray) -> Mask:
        c, s = math.cos(self.angle), math.sin(self.angle)
        a = (x * c + y * s) * (1.0 / self.period) + self.phase[0]
        if self.kind == STRIPES:
            return a - np.floor(a) < self.fill
        b = (y * c - x * s) * (1.0 / self.period) + self.phase[1]
        if self.kind == CHECKS:
            return (np.floor(a) + np.floor(b)) % 2 == 1
        if self.kind != DOTS:
            raise ValueError(f"Texture(kind=) expects STRIPES, CHECKS or DOTS; got {self.kind!r}.")
        fa, fb = a - np.floor(a) - 0.5, b - np.floor(b) - 0.5
        return fa * fa + fb * fb <= self.fill * self.fill


def sample_texture(kind: int, radius: float, rng: np.random.Generator) -> Texture:
    """Random orientation, phase and a period of 0.3 to 0.5 radius (at least ``MIN_PERIOD_PX``)."""
    angle = float(rng.uniform(0.0, math.pi))
    period = max(MIN_PERIOD_PX, radius * float(rng.uniform(0.3, 0.5)))
    phase = (float(rng.uniform()), float(rng.uniform()))
    fill = float(rng.uniform(0.4, 0.6)) if kind == STRIPES else float(rng.uniform(0.24, 0.33))
    return Texture(kind, angle, period, phase, fill)


# ----------------------------------------------------------------------------------------------
# Drawing


@dataclass(frozen=True)
class Spot:
    """Where a shape goes: ``mask`` (bool (h, w), the part inside the image) at image pixel (y0, x0).

    ``rows, cols`` (intp (n,)) index the n mask pixels in row-major order; ``x`` (float32 (w,)) and
    ``y`` (float32 (h,)) are the pixel-centre offsets of the patch columns and rows from the shape's
    centre; ``covered[i]`` is the number of pixels of annotated object ``i`` that the shape hides.
    """

    y0: int
    x0: int
    mask: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    x: np.ndarray
    y: np.ndarray
    covered: np.ndarray

    @property
    def region(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.mask.shape[0]), slice(self.x0, self.x0 + self.mask.shape[1])


_NOTHING_COVERED = np.zeros(0, dtype=np.int64)


class Canvas:
    """A float32 RGB canvas with a label map and per-object pixel counts, drawn patch by patch."""

    def __init__(self, background: np.ndarray, capacity: int) -> None:
        self.rgb = background
        self.size = background.shape[0]
        self.labels = np.zeros(background.shape[:2], dtype=np.int32)
        self.visible = np.zeros(capacity + 1, dtype=np.int64)
        self.drawn = np.zeros(capacity + 1, dtype=np.int64)

    def place(self, shape: Shape, radius: float, rng: np.random.Generator, *, annotated: bool) -> Spot | None:
        """Find a position for ``shape`` of ``radius`` px; None after ``PLACEMENT_TRIES`` failed tries.

        The mask is computed once, at a random rotation and sub-pixel offset; the tries move it by whole
        pixels. A try fails when the shape leaves an annotated object less than ``MIN_VISIBLE_FRACTION``
        of its drawn pixels or, for an annotated shape, keeps less than ``MIN_INSIDE_FRACTION`` of itself
        inside the image.
        """
        half = int(math.ceil(radius)) + 1
        angle, frac = rng.uniform(0.0, 2.0 * math.pi), rng.uniform(0.0, 1.0, 2).astype(np.float32)
        offsets = np.arange(-half, half + 1, dtype=np.float32) + np.float32(0.5)
        x, y = offsets - frac[0], offsets - frac[1]
        c, s = np.float32(math.cos(angle) / radius), np.float32(math.sin(angle) / radius)
        xc, xs, yc, ys = x * c, x * s, y[:, None] * c, y[:, None] * s
        full = shape.mask(xc + ys, yc - xs)
        least_inside = max(MIN_INSIDE_FRACTION * int(np.count_nonzero(full)), MIN_INSIDE_PX) if annotated else 1
        for cy, cx in rng.integers(-half, self.size - half, (PLACEMENT_TRIES, 2)).tolist():
            y0, x0 = max(cy, 0), max(cx, 0)
            rows, cols = slice(y0 - cy, min(2 * half + 1, self.size - cy)), slice(x0 - cx, min(2 * half + 1, self.size - cx))
            mask = full[rows, cols]
            if np.count_nonzero(mask) < least_inside:
                continue
            covered = self.labels[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]][mask]
            if covered.max() > 0:  # hides part of an annotated object: does enough of each stay visible?
                covered = np.bincount(covered[covered > 0])
                if np.any(self.visible[: covered.size] - covered < MIN_VISIBLE_FRACTION * self.drawn[: covered.size]):
                    continue
            else:
                covered = _NOTHING_COVERED
            return Spot(y0, x0, mask, *np.nonzero(mask), x[cols], y[rows], covered)
        return None

    def paint(self, spot: Spot, pixels: np.ndarray, label: int) -> list[float]:
        """Draw ``pixels`` (float32 (n, 3), the colours of the n mask pixels in row-major order) at ``spot``.

        Returns the tight xywh box of the mask (absolute pixels).
        """
        self.visible[: spot.covered.size] -= spot.covered
        self.rgb[spot.region][spot.mask] = pixels
        self.labels[spot.region][spot.mask] = label
        if label > 0:
            self.visible[label] = self.drawn[label] = spot.rows.size
        top, bottom, left, right = int(spot.rows[0]), int(spot.rows[-1]), int(spot.cols.min()), int(spot.cols.max())
        return [float(spot.x0 + left), float(spot.y0 + top), float(right - left + 1), float(bottom - top + 1)]

    def mean_under(self, spot: Spot) -> np.ndarray:
        """float64 (3,): mean colour under the mask, estimated from every 7th mask pixel."""
        return self.rgb[spot.region][spot.rows[::7], spot.cols[::7]].mean(axis=0, dtype=np.float64)


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (size, size, 3): a linear gradient between two random colours plus a low-frequency wave.

    Both terms are sums of products f(y) g(x), so the image is one (size, 4) @ (4, size * 3) product:
    rgb = c0 + (c1 - c0) (ty + tx) + amp (sin(ay) cos(bx) + cos(ay) sin(bx)).
    """
    c0, c1 = rng.uniform(0.0, 255.0, 3), rng.uniform(0.0, 255.0, 3)
    theta, freq = rng.uniform(0.0, 2.0 * math.pi, 2), rng.uniform(0.3, 2.0, 2)
    amp, phase = rng.uniform(0.0, 25.0, 3), rng.uniform(0.0, 2.0 * math.pi)
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size
    ty, tx = pos * math.sin(theta[0]), pos * math.cos(theta[0])
    low, span = min(ty[0], ty[-1]) + min(tx[0], tx[-1]), abs(ty[-1] - ty[0]) + abs(tx[-1] - tx[0])
    ty, tx = ty / max(span, 1e-6), (tx - low) / max(span, 1e-6)  # ty + tx spans [0, 1]
    ay = 2.0 * math.pi * freq[0] * math.sin(theta[1]) * pos + phase
    bx = 2.0 * math.pi * freq[1] * math.cos(theta[1]) * pos
    rows = np.stack([np.ones(size), ty, np.sin(ay), np.cos(ay)], axis=1)  # (size, 4)
    cols = np.stack([c0 + np.outer(tx, c1 - c0), np.broadcast_to(c1 - c0, (size, 3)),
                     np.outer(np.cos(bx), amp), np.outer(np.sin(bx), amp)])  # (4, size, 3)
    return (rows.astype(np.float32) @ cols.reshape(4, -1).astype(np.float32)).reshape(size, size, 3)


def contrasting_colour(reference: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniform random RGB colour at least ``MIN_CONTRAST`` from ``reference`` (the farthest of 8 draws otherwise)."""
    draws = rng.uniform(0.0, 255.0, (8, 3))
    dist2 = ((draws - reference) ** 2).sum(axis=1)
    good = np.flatnonzero(dist2 >= MIN_CONTRAST**2)
    return draws[good[0] if good.size else int(np.argmax(dist2))].astype(np.float32)


def fill_colours(canvas: Canvas, spot: Spot, *, kind: str, texture: int, radius: float,
                 rng: np.random.Generator) -> np.ndarray:
    """float32 (n, 3): colours of the n mask pixels of a shape at ``spot``, in row-major order.

    A uniform random first colour that stands out from what the shape covers, the second colour of the
    texture (index in ``TEXTURES``) where its pattern shows, and a linear shading of up to +-25 % across
    the shape; ``kind == "noise"`` fills with per-pixel random colours instead.
    """
    first = contrasting_colour(canvas.mean_under(spot), rng)
    n = spot.rows.size
    if kind == "noise":
        return rng.uniform(0.0, 255.0, (n, 3)).astype(np.float32)
    x, y = spot.x[spot.cols], spot.y[spot.rows]
    if texture == SOLID:
        pixels = np.broadcast_to(first, (n, 3))
    else:
        second = contrasting_colour(first, rng)
        pixels = np.where(sample_texture(texture, radius, rng).second(x, y)[:, None], second, first)
    gain, direction = rng.uniform(0.0, 0.25) / radius, rng.uniform(0.0, 2.0 * math.pi)
    shade = np.float32(math.cos(direction) * gain) * x + np.float32(math.sin(direction) * gain) * y
    shade += np.float32(1.0)
    return pixels * shade[:, None]


def add_noise(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W, 3): ``rgb`` (float32, modified in place) plus Gaussian noise of sigma 2 to 8, clipped.

    One random byte per value indexes 256 normal quantiles: ten times cheaper than normal draws.
    """
    lut = _NORMAL_QUANTILES * np.float32(rng.uniform(2.0, 8.0))
    rgb += lut.take(np.frombuffer(rng.bytes(rgb.size), dtype=np.uint8).reshape(rgb.shape))
    return np.clip(rgb, 0.0, 255.0, out=rgb).astype(np.uint8)


def _normal_quantiles(n: int = 256) -> np.ndarray:
    """float32 (n,): standard normal quantiles at (i + 0.5) / n."""
    from statistics import NormalDist

    return np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)], dtype=np.float32)


_NORMAL_QUANTILES = _normal_quantiles()
