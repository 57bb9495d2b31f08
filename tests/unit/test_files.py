"""A file written whole: readers at any moment see one writer's text entire, never a mix or
a part, however many write at once; nothing is left beside it, even when a write fails."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from vre.files import write_whole


def test_readers_see_one_whole_text_while_many_write_at_once(tmp_path: Path) -> None:
    target = tmp_path / "exited.json"
    texts = [str(n) * (20_000 + n) for n in range(8)]  # long enough to be written in parts
    write_whole(target, texts[0])
    stop = threading.Event()
    seen: list[str] = []
    errors: list[BaseException] = []

    def writer(text: str) -> None:
        try:
            for _ in range(60):
                write_whole(target, text)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            seen.append(target.read_text())

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(t,)) for t in texts]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert not errors
    assert seen and set(seen) <= set(texts)
    assert [p.name for p in tmp_path.iterdir()] == ["exited.json"]


def test_its_mode_is_set_before_it_appears(tmp_path: Path) -> None:
    target = tmp_path / "notice"
    write_whole(target, "hello\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_whole(target, "secret\n", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "secret\n"


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_whole(target, "old")
    with pytest.raises(UnicodeEncodeError):
        write_whole(target, "\ud800")  # a lone surrogate cannot be written as UTF-8
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]
