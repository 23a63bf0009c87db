"""The map of stages in README.md, drawn from the transition table (`machine.ROWS`).

Pure text: `mermaid()` draws the table, `with_map(readme)` puts it into the README's
generated block. `python -m upparat.statemap --write` writes the file (the core does no I/O).
"""

from __future__ import annotations

from upparat.core import machine

BEGIN = (
    "<!-- statemap: generated from machine.ROWS by `python -m upparat.statemap --write`;"
    " do not edit -->"
)
END = "<!-- /statemap -->"
AFTER_EVERY_EVENT = "after any event"
"""How the map names the arrows `step` takes after the event's handler (`_pump`)."""


def _name(source: type[machine.Stage] | machine.Stages) -> str:
    return source.name if isinstance(source, machine.Stages) else source.__name__


def _arrows() -> list[tuple[str, str, str, list[str]]]:
    """(source, target, label, events): one per distinct arrow, in lifecycle order."""
    found: dict[tuple[str, str, str], list[str]] = {}
    order: dict[tuple[str, str, str], tuple[int, int]] = {}
    stages = list(machine.EVERY_STAGE.members)
    rows = [(row.event.__name__, row.arrows) for row in machine.ROWS]
    rows.append((AFTER_EVERY_EVENT, machine.AFTER_EVERY_EVENT))
    for number, (event, arrows) in enumerate(rows):
        for arrow in arrows:
            key = (_name(arrow.source), arrow.target.__name__, arrow.label)
            events = found.setdefault(key, [])
            if event not in events:
                events.append(event)
            source = arrow.source
            rank = len(stages) if isinstance(source, machine.Stages) else stages.index(source)
            order.setdefault(key, (rank, number))
    keys = sorted(found, key=lambda k: order[k])
    return [(*key, found[key]) for key in keys]


def _groups() -> list[machine.Stages]:
    seen: dict[str, machine.Stages] = {}
    for arrows in [*(row.arrows for row in machine.ROWS), machine.AFTER_EVERY_EVENT]:
        for arrow in arrows:
            if isinstance(arrow.source, machine.Stages):
                seen.setdefault(arrow.source.name, arrow.source)
    return list(seen.values())


def mermaid() -> str:
    """The `stateDiagram-v2` of every arrow of the table, labelled `what [events]`."""
    lines = ["stateDiagram-v2"]
    lines += [f'    state "{group.title}" as {group.name}' for group in _groups()]
    lines.append(f"    [*] --> {machine.Booting.__name__}")
    for source, target, label, events in _arrows():
        lines.append(f"    {source} --> {target}: {label} [{', '.join(events)}]")
    lines.append(f"    {machine.Stopped.__name__} --> [*]")
    return "\n".join(lines) + "\n"


def block() -> str:
    """The README's generated block: the markers around the mermaid code."""
    members = [
        f"- `{group.name}`: {', '.join(s.__name__ for s in group.members)}" for group in _groups()
    ]
    return "\n".join(
        [BEGIN, "", "```mermaid", mermaid().rstrip("\n"), "```", "", *members, "", END]
    )


def with_map(readme: str) -> str:
    """`readme` with its generated block replaced by the current one."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"README has no block between {BEGIN!r} and {END!r}")
    return head + block() + tail
