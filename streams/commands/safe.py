"""Data shown on an operator's terminal: never markup, never a control sequence.

Dead letters, CRM sync errors and connection fields hold text chosen by users,
producers or remote servers. Printed as rich markup, ``[/]`` crashes the
command (``MarkupError``) and ``[link=…]`` or ``[on red]`` restyles the screen;
printed raw, an ESC sequence moves the cursor, rewrites earlier lines or sets
the window title. ``cell`` and ``clean`` make such text inert: markup is not
interpreted and every control character — C0, DEL, C1 and the bidirectional
overrides that reorder what the eye reads — is shown as an escape (``\\x1b``).
"""

from __future__ import annotations

import re

from rich.text import Text

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object) -> str:
    """``value`` as text with every control character shown as an escape."""
    return _CONTROL.sub(_escape, "" if value is None else str(value))


def cell(value: object) -> Text:
    """A table cell or line of data: escaped, and never read as markup."""
    return Text(clean(value))
