"""Opening files beneath a root: what is served and what is refused (both resolvers)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.sinks import _confine
from relay.sinks._confine import FileRefused, open_beneath


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "walk":
        monkeypatch.setattr(_confine, "_HAVE_OPENAT2", False)
    elif not _confine._HAVE_OPENAT2:
        pytest.skip("no openat2 here")
    return str(request.param)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """root/ with a file, a subdirectory, and a secret next to root (outside it)."""
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"inside")
    (root / "docs" / "b.txt").write_bytes(b"nested")
    (tmp_path / "secret.txt").write_bytes(b"outside")
    (tmp_path / "secretdir").mkdir()
    (tmp_path / "secretdir" / "c.txt").write_bytes(b"outside")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield root, fd
    os.close(fd)


def read(root_fd: int, name: str) -> bytes:
    fd, info = open_beneath(root_fd, name)
    try:
        data = os.read(fd, 1 << 16)
        assert len(data) == info.st_size
        return data
    finally:
        os.close(fd)


def refused(root_fd: int, name: str) -> str:
    with pytest.raises(FileRefused) as caught:
        open_beneath(root_fd, name)
    assert caught.value.status == 404  # every refusal looks like a missing file
    return caught.value.reason


def test_regular_files_are_served(tree: tuple[Path, int], resolver: str) -> None:
    _, fd = tree
    assert read(fd, "a.txt") == b"inside"
    assert read(fd, "docs/b.txt") == b"nested"


def test_missing_files(tree: tuple[Path, int], resolver: str) -> None:
    _, fd = tree
    assert refused(fd, "nope.txt") == "missing"
    assert refused(fd, "docs/nope/x.txt") == "missing"
    assert refused(fd, "a.txt/x") == "missing"  # a file used as a directory


@pytest.mark.parametrize("name", ["../secret.txt", "docs/../../secret.txt", "./a.txt", "docs//b.txt",
                                  "", "docs/", "a\\b", "a\0b", "/etc/passwd"])
def test_names_that_are_not_plain_paths(tree: tuple[Path, int], resolver: str, name: str) -> None:
    _, fd = tree
    assert refused(fd, name) == "bad_name"


def test_symlinks_out_of_root(tree: tuple[Path, int], resolver: str) -> None:
    root, fd = tree
    (root / "abs").symlink_to(root.parent / "secret.txt")
    (root / "rel").symlink_to("../secret.txt")
    (root / "dirlink").symlink_to(root.parent / "secretdir")
    (root / "null").symlink_to("/dev/null")
    for name in ("abs", "rel", "dirlink/c.txt", "null"):
        assert refused(fd, name) in {"outside", "missing"}


def test_symlinks_inside_root(tree: tuple[Path, int], resolver: str) -> None:
    root, fd = tree
    (root / "alias.txt").symlink_to("a.txt")
    (root / "docs" / "up.txt").symlink_to("../a.txt")
    (root / "alldocs").symlink_to("docs")
    names = ("alias.txt", "docs/up.txt", "alldocs/b.txt")
    if resolver == "openat2":  # followed, as lighttpd and nginx do
        assert [read(fd, name) for name in names] == [b"inside", b"inside", b"nested"]
    else:  # the fallback follows no link at all
        assert all(refused(fd, name) in {"outside", "missing"} for name in names)


def test_what_is_not_a_regular_file(tree: tuple[Path, int], resolver: str) -> None:
    root, fd = tree
    os.mkfifo(root / "fifo")  # opened without blocking, then refused
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(root / "sock"))
        for name in ("docs", "fifo", "sock"):
            assert refused(fd, name) == "not_regular"
    finally:
        listener.close()


def test_very_long_names(tree: tuple[Path, int], resolver: str) -> None:
    _, fd = tree
    assert refused(fd, "x" * 256) == "missing"
    assert refused(fd, "/".join(["d"] * 3000)) == "missing"
    assert refused(fd, "docs/" + "y" * 255) == "missing"  # as long as allowed, and absent


def test_a_link_swapped_in_after_a_check_is_still_refused(tree: tuple[Path, int], resolver: str) -> None:
    # confinement happens while opening, so replacing a file by a link between any
    # earlier look and the open changes nothing
    root, fd = tree
    assert read(fd, "docs/b.txt") == b"nested"
    (root / "docs" / "b.txt").unlink()
    (root / "docs" / "b.txt").symlink_to(root.parent / "secret.txt")
    assert refused(fd, "docs/b.txt") in {"outside", "missing"}
