"""The map in upparat/core/README.md is the transition table, drawn."""

from __future__ import annotations

from pathlib import Path

import pytest

import upparat.core
from upparat import statemap as writer
from upparat.core import machine, statemap

README = Path(upparat.core.__file__).parent / "README.md"


def test_the_readme_map_is_the_table() -> None:
    text = README.read_text(encoding="utf-8")
    assert statemap.with_map(text) == text, (
        "upparat/core/README.md: the map differs from machine.ROWS;"
        " regenerate it with `python -m upparat.statemap --write`"
    )


def test_every_arrow_is_drawn() -> None:
    drawn = statemap.mermaid()
    for row in machine.ROWS:
        for arrow in row.arrows:
            source = arrow.source
            name = source.name if isinstance(source, machine.Stages) else source.__name__
            line = f"    {name} --> {arrow.target.__name__}: {arrow.label} ["
            assert line in drawn
            assert row.event.__name__ in drawn.split(line, 1)[1].split("\n", 1)[0]


def test_labels_are_plain_text_for_mermaid() -> None:
    arrows = [a for row in machine.ROWS for a in row.arrows] + list(machine.AFTER_EVERY_EVENT)
    for arrow in arrows:
        assert arrow.label
        assert not set(arrow.label) & set(":;#[]\n"), arrow.label


def test_a_changed_table_changes_the_map(monkeypatch: pytest.MonkeyPatch) -> None:
    before = statemap.block()
    started = machine.ROWS[0]
    arrow = machine.Arrow(source=machine.Booting, target=machine.Idle, label="a new arrow")
    changed = type(started)(
        event=started.event, handler=started.handler, stays=started.stays, arrows=(arrow,)
    )
    monkeypatch.setattr(machine, "ROWS", (changed, *machine.ROWS[1:]))
    assert statemap.block() != before
    assert "Booting --> Idle: a new arrow [Started]" in statemap.mermaid()
    text = README.read_text(encoding="utf-8")
    assert statemap.with_map(text) != text


def test_a_readme_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="no block"):
        statemap.with_map("# no map here\n")


def test_the_writer_checks_and_rewrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# core\n\n{statemap.BEGIN}\nstale\n{statemap.END}\n", encoding="utf-8")
    monkeypatch.setattr(writer, "README", readme)
    assert writer.main(["--check"]) == 1
    assert "python -m upparat.statemap --write" in capsys.readouterr().out
    assert writer.main(["--write"]) == 0
    assert writer.main(["--check"]) == 0
    assert statemap.mermaid() in readme.read_text(encoding="utf-8")
