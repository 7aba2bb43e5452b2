"""
The receiver's nodes: who holds which token (``--nodes FILE``), and when each was last heard.

:func:`parse_nodes` checks a nodes file's content; :class:`Principals` maps a
bearer token to the node that holds it (or to the operator); :class:`Heartbeats`
remembers when each node was last heard, for the ticker to write down.
No message ever holds a token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Mapping
from typing import Any, Optional

from .._exceptions import ConfigError
from .._forksafe import after_fork_in_child

__all__ = [
    "MIN_TOKEN_LENGTH",
    "NODE_NAME",
    "Heartbeats",
    "Principals",
    "load_nodes",
    "parse_nodes",
    "token_problem",
]

#: A node's name: 1 to 64 of these characters.
NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: The shortest token a node or the operator may hold (Lightd's are at least 20 characters).
MIN_TOKEN_LENGTH = 20
_MAX_FILE = 1 << 20


def token_problem(token: object) -> Optional[str]:
    """Say what is wrong with *token* (never quoting it), or return None."""
    if not isinstance(token, str):
        return f"the token must be a string, not {type(token).__name__}"
    if not (token.isascii() and token.isprintable()) or any(ch.isspace() for ch in token):
        return "the token must be printable ASCII without whitespace"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"the token has {len(token)} characters; at least {MIN_TOKEN_LENGTH}"
    return None


def parse_nodes(doc: Any, *, operator: Optional[str] = None) -> dict[str, str]:
    """
    Check a decoded nodes file (``{"name": "token", ...}``); return it as a dict.

    Raises:
        ConfigError: Naming the node and what is wrong, never a token.
    """
    if not isinstance(doc, dict):
        raise ConfigError("nodes: the file must hold a JSON object mapping node names to tokens")
    owners: dict[str, str] = {}
    for name, token in doc.items():
        if not NODE_NAME.fullmatch(name):
            shown = name if len(name) <= 80 and name.isprintable() else f"{name[:80]!r}..."
            raise ConfigError(
                f"nodes: node {shown!r}: a name is 1 to 64 characters of A-Z a-z 0-9 . _ -"
            )
        problem = token_problem(token)
        if problem is not None:
            raise ConfigError(f"nodes: node {name!r}: {problem}")
        if token in owners:
            raise ConfigError(
                f"nodes: node {name!r} has the same token as node {owners[token]!r}; "
                "each node needs its own"
            )
        if operator is not None and token == operator:
            raise ConfigError(f"nodes: node {name!r} has the operator's token; give it its own")
        owners[token] = name
    return dict(doc)


def load_nodes(path: str, *, operator: Optional[str] = None) -> dict[str, str]:
    """Read and check the nodes file at *path* (see :func:`parse_nodes`)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"nodes: cannot read {path!r}: {exc.strerror}") from None
    if len(raw) > _MAX_FILE:
        raise ConfigError(f"nodes: {path!r} is larger than {_MAX_FILE} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        # Never quote the parser's message: it may hold a piece of a token.
        raise ConfigError(f"nodes: {path!r} is not valid UTF-8 JSON") from None
    if os.name != "nt":
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = 0
        if mode & 0o077:
            from .._logutil import get_logger

            get_logger("receiver").warning("%s can be read by other users; chmod 600 it", path)
    return parse_nodes(doc, operator=operator)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class Principals:
    """
    Who a bearer token belongs to: a node, the operator, or (without nodes) the single token.

    Tokens are kept as SHA-256 digests, looked up by digest: the time a
    lookup takes says nothing about how much of a token was right.
    """

    def __init__(
        self,
        *,
        single: Optional[str],
        operator: Optional[str],
        nodes: Optional[Mapping[str, str]],
    ) -> None:
        self.single = None if single is None else _digest(single)
        self.operator = None if operator is None else _digest(operator)
        # Replaced whole on reload (one reference swap: readers need no lock).
        self._nodes: dict[bytes, str] = {}
        self.names: tuple[str, ...] = ()
        self.with_nodes = nodes is not None
        if nodes is not None:
            self.replace(nodes)

    def replace(self, nodes: Mapping[str, str]) -> None:
        """Serve this set of nodes from now on."""
        self._nodes = {_digest(token): name for name, token in nodes.items()}
        self.names = tuple(sorted(nodes))

    def is_operator(self, token: str) -> bool:
        """Whether *token* is the operator's."""
        return self.operator is not None and _digest(token) == self.operator

    def who(self, header: object) -> Optional[tuple[str, Optional[str]]]:
        """
        ``("node", name)``, ``("operator", None)``, ``("single", None)``, or None (no match).
        """
        if not isinstance(header, str):
            return None
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        digest = _digest(credentials.strip())
        if self.single is not None and digest == self.single:
            return ("single", None)
        name = self._nodes.get(digest)
        if name is not None:
            return ("node", name)
        if self.operator is not None and digest == self.operator:
            return ("operator", None)
        return None


class Heartbeats:
    """When each node was last heard by this receiver (seconds since the epoch)."""

    def __init__(self) -> None:
        # Guards _heard and _unwritten: request threads write, the ticker drains.
        self._lock = threading.Lock()
        self._heard: dict[str, float] = {}
        self._unwritten: dict[str, float] = {}
        after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def heard(self, name: str, at: float) -> None:
        """Note a request from node *name* at *at*."""
        with self._lock:
            self._heard[name] = at
            self._unwritten[name] = at

    def take_unwritten(self) -> dict[str, float]:
        """What was heard since the last call (for the database)."""
        with self._lock:
            taken, self._unwritten = self._unwritten, {}
        return taken

    def put_back(self, seen: Mapping[str, float]) -> None:
        """Keep *seen* for the next write (the database failed this time)."""
        with self._lock:
            for name, at in seen.items():
                if at > self._unwritten.get(name, 0.0):
                    self._unwritten[name] = at

    def last(self) -> dict[str, float]:
        """When each node was last heard by this receiver."""
        with self._lock:
            return dict(self._heard)
