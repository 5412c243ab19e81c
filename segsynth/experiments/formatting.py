"""Formatting shared by the terminal summary, the verdict and the HTML report (below all three: they import it,
it imports none of them)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}


def fmt(x: float | None, digits: int = 3) -> str:
    """A number, or "–" when missing or not finite."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}f}"


def fmt_pm(mean: float | None, sd: float | None, digits: int = 3) -> str:
    """ "mean ± sd", the mean alone without a finite sd, "–" without a finite mean."""
    if mean is None or not math.isfinite(mean):
        return "–"
    if sd is None or not math.isfinite(sd):
        return fmt(mean, digits)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value: "n/a", "<0.001", three decimals below 0.1, two above."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def p_words(p: float | None) -> str:
    """ "p = 0.012", "p < 0.001" or "p n/a", to stand in a sentence."""
    s = fmt_p(p)
    return f"p {s[0]} {s[1:]}" if s.startswith("<") else ("p n/a" if s == "n/a" else f"p = {s}")


def escape(s: object) -> str:
    """HTML-escaped text (quotes too)."""
    return html.escape(str(s), quote=True)


def img_tag(path: Path, alt: str) -> str:
    """An <img> that embeds the file as base64 (the report stays one self-contained file)."""
    path = Path(path)
    mime = IMAGE_TYPES.get(path.suffix.lower(), "image/png")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:{mime};base64,{data}" alt="{escape(alt)}">'


__all__ = ["IMAGE_TYPES", "escape", "fmt", "fmt_p", "fmt_pm", "img_tag", "p_words"]
