"""A report as a list of blocks, rendered to Markdown (image links) and to self-contained HTML
(images embedded as base64 data URIs, inline CSS, no external resource)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1, h2, h3 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f3f4f6; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; display: block; margin: .5em 0 1.5em; }
p.note { color: #555; font-size: 13px; }
"""


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    alt: str


@dataclass
class Document:
    """The report's content in order; ``title`` becomes the H1 and the HTML title."""

    title: str
    blocks: list[Heading | Paragraph | Table | Image] = field(default_factory=list)

    def add(self, block: Heading | Paragraph | Table | Image | None) -> None:
        if block is not None:
            self.blocks.append(block)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document, base: Path) -> str:
    """Markdown; images are linked relative to ``base`` (the report folder)."""
    lines = [f"# {doc.title}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            lines.append("|" + "|".join("---" for _ in block.headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        else:
            rel = Path(block.path).relative_to(base) if Path(block.path).is_relative_to(base) \
                else Path(block.path)
            lines += [f"![{block.alt}]({rel.as_posix()})", ""]
    return "\n".join(lines)


def _data_uri(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def to_html(doc: Document) -> str:
    """One self-contained HTML page: inline CSS, PNGs as ``data:`` URIs."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(doc.title)}</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>{esc(doc.title)}</h1>"]
    for block in doc.blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 2), 6)
            parts.append(f"<h{level}>{esc(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            parts.append(f'<p class="note">{esc(block.text)}</p>')
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            parts.append(f'<img alt="{esc(block.alt)}" src="{_data_uri(block.path)}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
