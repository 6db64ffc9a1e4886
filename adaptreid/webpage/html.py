"""Building blocks of the pages: framed thumbnails as data URIs, the page shell, a small
Markdown-to-HTML converter for the report's own Markdown."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

from PIL import Image

#: frame colours drawn *into* each thumbnail's pixels, so that a thumbnail that does not render
#: shows no frame (the browser tests count the frames in a screenshot)
QUERY = (40, 80, 220)
CORRECT = (30, 170, 60)
WRONG = (210, 40, 40)
UNLABELLED = (240, 150, 0)
CLUSTER = (150, 60, 200)

THUMB = (64, 128)
BORDER = 4

__all__ = [
    "CLUSTER",
    "CORRECT",
    "QUERY",
    "UNLABELLED",
    "WRONG",
    "esc",
    "markdown_to_html",
    "page",
    "png_data_uri",
    "thumbnail",
]


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def framed(path: str | Path, colour: tuple[int, int, int], size=THUMB, border=BORDER) -> bytes:
    """PNG bytes: the image at ``path`` resized to fit ``size`` (w, h) inside a frame of
    ``colour``; an unreadable file gives a grey cross in the frame."""
    w, h = size
    inner = (w - 2 * border, h - 2 * border)
    try:
        with Image.open(path) as im:
            img = im.convert("RGB").resize(inner, Image.BILINEAR)
    except Exception:
        img = Image.new("RGB", inner, (200, 200, 200))
    out = Image.new("RGB", (w, h), colour)
    out.paste(img, (border, border))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def thumbnail(path: str | Path, colour: tuple[int, int, int], title: str = "") -> str:
    """An ``<img>`` of the framed thumbnail, embedded, at its natural size."""
    uri = png_data_uri(framed(path, colour))
    w, h = THUMB
    return f'<img class="thumb" src="{uri}" width="{w}" height="{h}" title="{esc(title)}" alt="">'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 2px 6px; font-size: 13px; text-align: right; }
th { background: #f2f2f2; }
.row { display: flex; align-items: flex-start; gap: 6px; margin: 8px 0; }
.cell { text-align: center; font-size: 11px; width: 72px; }
.cell img { display: block; margin: 0 auto; }
.sep { width: 2px; align-self: stretch; background: #333; margin: 0 6px; }
.grid { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0 12px; }
.cluster { border: 1px solid #ddd; padding: 4px; }
.cluster h4 { margin: 0 0 4px; font-size: 12px; }
img.plot { max-width: 100%; }
img.thumb { margin: 1px; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _inline(text: str) -> str:
    text = esc(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def markdown_to_html(md: str, folder: Path) -> str:
    """The Markdown the report writer produces (headings, bullet lists, pipe tables, image
    lines ``![title](file)``, paragraphs) as HTML, images read from ``folder`` and embedded."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if m := re.match(r"(#{1,6}) (.*)", line):
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
            i += 1
        elif m := re.fullmatch(r"!\[(.*)\]\((.+)\)", line.strip()):
            f = folder / m.group(2)
            if f.is_file():
                uri = png_data_uri(f.read_bytes())
                out.append(f'<p><img class="plot" src="{uri}" alt="{esc(m.group(1))}"></p>')
            i += 1
        elif line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            head, *body = rows
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            for r in body:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
            out.append("</table>")
        elif re.match(r"\s*[-*] ", line):
            out.append("<ul>")
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                out.append(f"<li>{_inline(lines[i].split(' ', 1)[1].strip())}</li>")
                i += 1
            out.append("</ul>")
        else:
            para = [line.strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"[#|!]|\s*[-*] ", lines[i]):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)
