"""Dependency-free PNG charts for the bench suite (numpy + zlib): line charts
on log-scaled axes and grouped bar charts, labelled with a 5x7 bitmap font.
Small and plain on purpose: a picture of the numbers in bench.json."""

from __future__ import annotations

import math
import struct
import zlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

# 5x7 glyphs, one 5-bit row per entry (MSB = leftmost column). Lower case is
# drawn as upper case.
_FONT: Dict[str, Tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14), "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14), "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8), "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12),
    "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30), "C": (14, 17, 16, 16, 16, 17, 14),
    "D": (28, 18, 17, 17, 17, 18, 28), "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17), "I": (14, 4, 4, 4, 4, 4, 14),
    "J": (7, 2, 2, 2, 2, 18, 12), "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17), "O": (14, 17, 17, 17, 17, 17, 14),
    "P": (30, 17, 17, 30, 16, 16, 16), "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4), "U": (17, 17, 17, 17, 17, 17, 14),
    "V": (17, 17, 17, 17, 17, 10, 4), "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 17, 10, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    ".": (0, 0, 0, 0, 0, 12, 12), ",": (0, 0, 0, 0, 12, 4, 8), ":": (0, 12, 12, 0, 12, 12, 0),
    "-": (0, 0, 0, 31, 0, 0, 0), "+": (0, 4, 4, 31, 4, 4, 0), "_": (0, 0, 0, 0, 0, 0, 31),
    "/": (1, 1, 2, 4, 8, 16, 16), "%": (24, 25, 2, 4, 8, 19, 3), "(": (2, 4, 8, 8, 8, 4, 2),
    ")": (8, 4, 2, 2, 2, 4, 8), "=": (0, 0, 31, 0, 31, 0, 0), "x": (0, 17, 10, 4, 10, 17, 0),
    "*": (0, 4, 21, 14, 21, 4, 0), "^": (4, 10, 17, 0, 0, 0, 0),
}

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


class Canvas:
    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.px = np.full((height, width, 3), 255, dtype=np.uint8)

    def rect(self, x0, y0, x1, y1, color):
        x0, x1 = sorted((int(round(x0)), int(round(x1))))
        y0, y1 = sorted((int(round(y0)), int(round(y1))))
        self.px[max(0, y0):min(self.h, y1 + 1), max(0, x0):min(self.w, x1 + 1)] = color

    def line(self, x0, y0, x1, y1, color, width: int = 1):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.linspace(x0, x1, n).round().astype(int)
        ys = np.linspace(y0, y1, n).round().astype(int)
        for d in range(-(width // 2), width - width // 2):
            ok = (xs >= 0) & (xs < self.w) & (ys + d >= 0) & (ys + d < self.h)
            self.px[ys[ok] + d, xs[ok]] = color

    def text(self, x, y, s: str, color=(0, 0, 0), scale: int = 1):
        x, y = int(x), int(y)
        for ch in s:
            glyph = _FONT.get(ch) or _FONT.get(ch.upper()) or _FONT["*"]
            for r, bits in enumerate(glyph):
                for c in range(5):
                    if bits >> (4 - c) & 1:
                        self.rect(x + c * scale, y + r * scale, x + c * scale + scale - 1,
                                  y + r * scale + scale - 1, color)
            x += 6 * scale

    def save(self, path: str) -> None:
        raw = b"".join(b"\x00" + row.tobytes() for row in self.px)

        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
        png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
        with open(path, "wb") as f:
            f.write(png)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.3g}k"
    if float(v).is_integer():
        return str(int(v))
    if abs(v) < 0.01:
        return f"{v:.0e}".replace("e-0", "e-")
    return f"{v:.3g}"


_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 40, 60


def line_chart(path: str, title: str, xlabel: str, ylabel: str,
               series: Dict[str, Sequence[Tuple[float, float]]], logx: bool = True, logy: bool = True,
               width: int = 640, height: int = 400) -> None:
    """One line per series over shared axes (log scales by default)."""
    cv = Canvas(width, height)
    pts = [(x, y) for s in series.values() for x, y in s if x > 0 and y > 0]
    if not pts:
        return
    fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    fy = (lambda v: math.log10(v)) if logy else (lambda v: v)
    xs, ys = [fx(x) for x, _ in pts], [fy(y) for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.1 or 0.5
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def to_px(x, y):
        return _LEFT + (fx(x) - x0) / (x1 - x0) * pw, _TOP + ph - (fy(y) - y0) / (y1 - y0) * ph

    _axes(cv, title, xlabel, ylabel, width, height)
    for i in range(5):  # y ticks
        v = y0 + (y1 - y0) * i / 4
        py = _TOP + ph - ph * i / 4
        cv.line(_LEFT - 4, py, _LEFT, py, (0, 0, 0))
        cv.text(4, py - 3, _fmt(10**v if logy else v))
    for x in sorted({x for s in series.values() for x, _ in s}):
        px, _ = to_px(x, 10 ** y0 if logy else y0)
        cv.line(px, _TOP + ph, px, _TOP + ph + 4, (0, 0, 0))
        label = _fmt(x)
        cv.text(px - 3 * len(label), _TOP + ph + 8, label)
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        p = [to_px(x, y) for x, y in s if x > 0 and y > 0]
        for (ax, ay), (bx, by) in zip(p, p[1:]):
            cv.line(ax, ay, bx, by, color, width=2)
        for ax, ay in p:
            cv.rect(ax - 2, ay - 2, ax + 2, ay + 2, color)
        cv.rect(_LEFT + 10, _TOP + 8 + 12 * i, _LEFT + 20, _TOP + 14 + 12 * i, color)
        cv.text(_LEFT + 26, _TOP + 8 + 12 * i, name)
    cv.save(path)


def bar_chart(path: str, title: str, ylabel: str, groups: List[str], series: Dict[str, Sequence[float]],
              width: int = 640, height: int = 400) -> None:
    """Grouped bars: one group per label in `groups`, one bar per series."""
    cv = Canvas(width, height)
    vmax = max([v for s in series.values() for v in s if v == v] + [1e-12])
    pw, ph = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    _axes(cv, title, "", ylabel, width, height)
    for i in range(5):
        v = vmax * 1.1 * i / 4
        py = _TOP + ph - ph * i / 4
        cv.line(_LEFT - 4, py, _LEFT, py, (0, 0, 0))
        cv.text(4, py - 3, _fmt(v))
    n_series = max(1, len(series))
    gw = pw / max(1, len(groups))
    bw = gw * 0.8 / n_series
    for gi, g in enumerate(groups):
        gx = _LEFT + gi * gw + gw * 0.1
        for si, (name, s) in enumerate(series.items()):
            v = s[gi] if gi < len(s) else float("nan")
            if v != v:
                continue
            top = _TOP + ph - ph * v / (vmax * 1.1)
            cv.rect(gx + si * bw, top, gx + (si + 1) * bw - 2, _TOP + ph, PALETTE[si % len(PALETTE)])
        cv.text(gx, _TOP + ph + 8, g[: int(gw // 6)])
    for si, name in enumerate(series):
        color = PALETTE[si % len(PALETTE)]
        cv.rect(_LEFT + 10, _TOP + 8 + 12 * si, _LEFT + 20, _TOP + 14 + 12 * si, color)
        cv.text(_LEFT + 26, _TOP + 8 + 12 * si, name)
    cv.save(path)


def _axes(cv: Canvas, title: str, xlabel: str, ylabel: str, width: int, height: int) -> None:
    ph = height - _TOP - _BOTTOM
    cv.text(_LEFT, 12, title, scale=2 if len(title) * 12 < width - _LEFT else 1)
    cv.line(_LEFT, _TOP, _LEFT, _TOP + ph, (0, 0, 0))
    cv.line(_LEFT, _TOP + ph, width - _RIGHT, _TOP + ph, (0, 0, 0))
    cv.text(_LEFT + (width - _LEFT - _RIGHT) // 2 - 3 * len(xlabel), height - 16, xlabel)
    cv.text(4, _TOP - 14, ylabel)
