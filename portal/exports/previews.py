"""What a reviewer is shown of a pinned file: text as text, tables as rows, the three image
formats browsers decode safely (told by their magic bytes, never by the name), and for every
other file its size alone. Markup (HTML, SVG) is text here: it is shown, never rendered."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

# How much of a file a preview reads, and how many rows of a table it shows.
TEXT_BYTES = 64 * 1024
TABLE_ROWS = 200
# The image formats a preview serves, by the bytes they start with.
IMAGES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
          (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))
TABLES = {".csv": ",", ".tsv": "\t"}


@dataclass(frozen=True)
class Preview:
    """A file as its preview shows it: kind is image, table, text or binary."""

    kind: str
    size: int
    mimetype: str = ""
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)
    cut: bool = False


def image_type(head: bytes) -> str | None:
    """The image format the bytes start with, if one a preview serves."""
    return next((kind for magic, kind in IMAGES if head.startswith(magic)), None)


def as_text(head: bytes) -> str | None:
    """The bytes as UTF-8 text (a character cut at the end forgiven); None for binary data."""
    if b"\x00" in head:
        return None
    for cut in range(4):
        try:
            return head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def preview_of(head: bytes, name: str, size: int) -> Preview:
    """The preview of a file of `size` bytes named `name`, from its first TEXT_BYTES bytes."""
    head = head[:TEXT_BYTES]
    image = image_type(head)
    if image:
        return Preview("image", size, mimetype=image)
    text = as_text(head)
    if text is None:
        return Preview("binary", size)
    cut = size > len(head)
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    if suffix in TABLES:
        lines = text.splitlines(keepends=True)
        if cut and lines:
            lines = lines[:-1]  # the last line read may be a part of a row
        rows: list[list[str]] = []
        try:
            for row in csv.reader(io.StringIO("".join(lines)), delimiter=TABLES[suffix]):
                if len(rows) == TABLE_ROWS:
                    return Preview("table", size, rows=rows, cut=True)
                rows.append(row)
        except csv.Error:  # not a table after all: shown as the text it is
            return Preview("text", size, text=text, cut=cut)
        return Preview("table", size, rows=rows, cut=cut)
    return Preview("text", size, text=text, cut=cut)
