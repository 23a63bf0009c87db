"""upparat-hookserver's attributes file ($UPPARAT_ATTRIBUTES): bounded, never followed
elsewhere, never blocking, always removed (hookservers/shell/attributes.py)."""

from __future__ import annotations

import os
from pathlib import Path

from hookservers.shell import attributes


def test_a_new_file_is_empty_private_and_removed_with_its_directory() -> None:
    path = attributes.create()
    try:
        assert path.read_bytes() == b""
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        (path.parent / "left-behind").write_text("x")
    finally:
        attributes.remove(path)
    assert not path.parent.exists()


def test_only_the_first_16_kib_are_read_in_whole_lines() -> None:
    path = attributes.create()
    try:
        line = b"k%05d=" + b"v" * 100 + b"\n"
        path.write_bytes(b"".join(line % i for i in range(200)))  # ~21 KB
        found, problems = attributes.read(path)
    finally:
        attributes.remove(path)
    assert 0 < len(found) < 200
    assert all(v == "v" * 100 for v in found.values()), "no cut line"
    assert problems == ["UPPARAT_ATTRIBUTES is over 16384 bytes; only its first lines were read"]


def test_a_symlink_put_in_its_place_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("password=hunter2\n")
    path = attributes.create()
    try:
        path.unlink()
        path.symlink_to(secret)
        found, problems = attributes.read(path)
    finally:
        attributes.remove(path)
    assert found == {}
    assert len(problems) == 1
    assert "cannot read UPPARAT_ATTRIBUTES" in problems[0]
    assert secret.exists(), "removing the directory leaves the link's target alone"


def test_a_fifo_put_in_its_place_does_not_block() -> None:
    path = attributes.create()
    try:
        path.unlink()
        os.mkfifo(path)
        found, problems = attributes.read(path)
    finally:
        attributes.remove(path)
    assert found == {}
    assert problems == ["UPPARAT_ATTRIBUTES is no longer a regular file; no attributes"]


def test_a_deleted_file_means_no_attributes_and_no_problem() -> None:
    path = attributes.create()
    path.unlink()
    try:
        assert attributes.read(path) == ({}, [])
    finally:
        attributes.remove(path)


def test_lines_are_parsed_one_by_one() -> None:
    found, problems = attributes.parse("a=1\r\n\n  \n=x\nnoequals\n b =2\na=3")
    assert found == {"a": "3", "b": "2"}
    assert problems == [
        "UPPARAT_ATTRIBUTES line 4 is not key=value: '=x'",
        "UPPARAT_ATTRIBUTES line 5 is not key=value: 'noequals'",
    ]
