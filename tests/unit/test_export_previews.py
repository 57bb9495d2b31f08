"""What a reviewer is shown of a pinned file, decided from its bytes alone: images by their
magic bytes whatever their name, markup as text, tables cut to their first rows, and binary
data by its size."""

from __future__ import annotations

import pytest

from portal.exports.previews import TABLE_ROWS, TEXT_BYTES, preview_of


@pytest.mark.parametrize("head,name,kind,mimetype", [
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "figure.png", "image", "image/png"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "figure.txt", "image", "image/png"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 20, "photo.jpg", "image", "image/jpeg"),
    (b"GIF89a" + b"\x00" * 20, "anim.gif", "image", "image/gif"),
    (b"GIF87a" + b"\x00" * 20, "old.gif", "image", "image/gif"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'><script>x()</script></svg>", "plot.svg",
     "text", ""),
    (b"<html><script>alert(1)</script></html>", "page.png", "text", ""),
    (b"BM\x00\x00\x00\x00", "bitmap.bmp", "binary", ""),
    (b"PK\x03\x04\x00\x00", "archive.zip", "binary", ""),
    (b"\xfe\xfe\xfe not utf-8", "weights.bin", "binary", ""),
], ids=["png", "png by any name", "jpeg", "gif89a", "gif87a", "svg as text",
        "html named png", "bmp", "zip", "not utf-8"])
def test_a_file_is_previewed_by_its_bytes(head: bytes, name: str, kind: str,
                                          mimetype: str) -> None:
    shown = preview_of(head, name, len(head))
    assert (shown.kind, shown.mimetype) == (kind, mimetype)
    if kind == "text":
        assert shown.text == head.decode()


def test_a_table_shows_its_first_rows_and_says_it_is_cut() -> None:
    data = "".join(f"{n}\t<b>{n}</b>\n" for n in range(TABLE_ROWS + 50)).encode()
    shown = preview_of(data, "counts.TSV", len(data))
    assert shown.kind == "table" and shown.cut and len(shown.rows) == TABLE_ROWS
    assert shown.rows[1] == ["1", "<b>1</b>"]  # escaped by the page, kept as it is here


def test_a_long_table_read_in_part_loses_only_its_last_partial_row() -> None:
    data = b"a,b\n" + b"1,2\n" * 3 + b"3,4"
    shown = preview_of(data, "t.csv", len(data) + 1000)
    assert shown.rows == [["a", "b"], ["1", "2"], ["1", "2"], ["1", "2"]] and shown.cut


def test_text_is_cut_at_its_limit_even_inside_a_character() -> None:
    data = ("é" * TEXT_BYTES).encode()
    shown = preview_of(data[:TEXT_BYTES], "notes.txt", len(data))
    assert shown.kind == "text" and shown.cut and len(shown.text) == TEXT_BYTES // 2


def test_text_with_a_nul_byte_is_binary() -> None:
    assert preview_of(b"abc\x00def", "notes.txt", 7).kind == "binary"
