"""
The common answer read without ``http.client``: a strict subset, everything else falls through.

``http.client`` parses every header block with the ``email`` package's feed
parser: measured on a kept-alive connection to nginx, that is more than a
third of a lane thread's CPU per update, and beside a busy host every
microsecond of Python a lane runs is taken from the host (see
docs/performance.md, "Busy host"). None of our dependencies has a cheaper
HTTP/1.1 parser (h11 is not one of them), so this module reads the one shape
that nearly every remote sends, and nothing else:

- the whole header block already in the connection's buffer (``peek``: no
  read is made beyond what ``http.client`` itself would make);
- ``HTTP/1.1``, a final status (200-599, not 204 or 304), a method other
  than ``HEAD``;
- header lines that are ``token ":" value`` (no folded lines, no NUL, at most
  100), exactly one ``Content-Length`` of ASCII digits, no
  ``Transfer-Encoding``.

Anything else returns ``None`` with nothing consumed, and ``http.client``
reads the answer as before. The values are what ``http.client`` would give
(decoded as ISO-8859-1, leading blanks stripped, the first of repeated
headers from ``get``); a property-based test holds the two side by side.
"""

from __future__ import annotations

import http.client
import io
import re
from collections.abc import Iterator, Mapping
from typing import Optional

__all__ = ["Headers", "quick_answer"]

_STATUS = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: [^\r\n]*)?\r\n")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n\x00]*)\r\n")
_DIGITS = re.compile(rb"[0-9]{1,12}\Z")
_MAX_HEADERS = 100  # http.client's limit too


class Headers(Mapping[str, str]):
    """An answer's headers, looked up in any case; a repeated one gives its first value."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields  # lowercased name -> first value

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:  # type: ignore[override]
        """The first value of header *name* (any case), else *default*."""
        return self._fields.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


def quick_answer(
    file: io.BufferedReader, method: str, max_body: int
) -> Optional[tuple[int, bytes, Headers, bool, Optional[int]]]:
    """
    Read the answer at the head of *file* if it is of the simple shape; else ``None``, nothing read.

    Returns:
        ``(status, body, headers, reusable, too_large)``: *too_large* is the
        declared length when it is over *max_body* (then nothing of the body
        is read and the connection is not reusable), else ``None``.

    Raises:
        http.client.IncompleteRead: The connection ended inside the body.
    """
    if method == "HEAD":
        return None
    head = file.peek(1)
    end = head.find(b"\r\n\r\n")
    if end < 0:  # not all here yet (or not HTTP at all): http.client reads it
        return None
    status_line = _STATUS.match(head)
    if status_line is None:
        return None
    status = int(status_line.group(1))
    if status in (204, 304):
        return None
    fields: dict[str, str] = {}
    length: Optional[int] = None
    pos, stop, count = status_line.end(), end + 2, 0
    while pos < stop:
        field = _FIELD.match(head, pos, stop)
        if field is None or count == _MAX_HEADERS:
            return None
        count += 1
        pos = field.end()
        name = field.group(1).decode("ascii").lower()
        if name == "content-length":
            if length is not None or _DIGITS.match(field.group(2)) is None:
                return None  # repeated or not a plain number: http.client decides
            length = int(field.group(2))
        elif name == "transfer-encoding":
            return None
        fields.setdefault(name, field.group(2).decode("iso-8859-1"))
    if length is None:
        return None
    file.read(end + 4)  # the status line and the headers, all in the buffer
    headers = Headers(fields)
    if length > max_body:
        return status, b"", headers, False, length
    body = file.read(length) if length else b""
    if len(body) < length:
        raise http.client.IncompleteRead(body, length - len(body))
    connection = fields.get("connection")
    reusable = connection is None or "close" not in connection.lower()
    return status, body, headers, reusable, None
