"""The rule for the hook scripts' extra environment: `[hookserver] environment` and
`pass_environment`. One home for it: the daemon's config check and the hook server both
import it, so both accept exactly the same values.

Scripts otherwise get a clean environment (the hook server's own is never passed on): a
script that needs `DBUS_SYSTEM_BUS_ADDRESS`, a proxy or a vendor tool's setting names it
here, the way systemd's `Environment=` and `PassEnvironment=` do.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A portable environment variable name (POSIX shells can read nothing else)."""

RESERVED = ("PATH",)
"""Names the hook server sets itself: PATH comes from `[hookserver] script_path`."""
RESERVED_PREFIX = "UPPARAT_"
"""The hook server's own variables (UPPARAT_HOOK, UPPARAT_JOB_ID, ...)."""


class InvalidEnvironment(ValueError):
    """A value does not parse; the message completes "must be ..." and names the culprit."""


def _check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise InvalidEnvironment(
            f"NAME=value items whose NAME is letters, digits and _ (not starting with a "
            f"digit); {name!r} is not such a name"
        )
    if name in RESERVED:
        raise InvalidEnvironment(
            f"free of {name}, which the hook server sets itself (use [hookserver] script_path)"
        )
    if name.startswith(RESERVED_PREFIX):
        raise InvalidEnvironment(
            f"free of {RESERVED_PREFIX}* names ({name}), which the hook server sets itself"
        )


def parse_assignments(text: str) -> tuple[tuple[str, str], ...]:
    """`NAME=value NAME2="with spaces"` (shell-style quoting) into ordered pairs."""
    try:
        items = shlex.split(text, comments=False, posix=True)
    except ValueError as e:  # unbalanced quotes
        raise InvalidEnvironment(f"NAME=value items with balanced quotes ({e})") from None
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in items:
        name, separator, value = item.partition("=")
        if not separator:
            raise InvalidEnvironment(f"NAME=value items; {item!r} has no '='")
        _check_name(name)
        if name in seen:
            raise InvalidEnvironment(f"NAME=value items naming each variable once; {name} twice")
        if "\0" in value:
            raise InvalidEnvironment(f"NAME=value items without NUL characters ({name})")
        seen.add(name)
        pairs.append((name, value))
    return tuple(pairs)


def parse_names(text: str) -> tuple[str, ...]:
    """`NAME1 NAME2`: variables copied from the hook server's own environment."""
    names: list[str] = []
    for name in text.split():
        _check_name(name)
        if name not in names:
            names.append(name)
    return tuple(names)


def extra_environment(
    passed: tuple[str, ...],
    assigned: tuple[tuple[str, str], ...],
    own: Mapping[str, str],
) -> dict[str, str]:
    """What the scripts get on top of the clean base: the passed names that are set in
    `own` (the hook server's environment), then the assignments (which win)."""
    extra = {name: own[name] for name in passed if name in own}
    extra.update(assigned)
    return extra
