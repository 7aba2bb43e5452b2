"""
Secrets in files: the token file of ``LIGHTD_REMOTE_TOKEN_FILE``, and warnings about shared files.

A token in a file (a Docker or Kubernetes secret, a systemd credential) keeps
it out of the environment and out of ``config.json``, the 12-factor way. The
file's contents never appear in a message: only its path and why it could not
be used.
"""

from __future__ import annotations

import logging
import os
import stat

from ._exceptions import ConfigError
from ._logutil import get_logger, safe_log

__all__ = ["TOKEN_FILE_VAR", "is_shared", "read_token_file", "warn_if_shared"]

#: The variable that names the token file.
TOKEN_FILE_VAR = "LIGHTD_REMOTE_TOKEN_FILE"  # noqa: S105 (a name, not a password)
#: The largest token file read: a token is one short line.
MAX_TOKEN_FILE = 64 * 1024
_SHARED = stat.S_IRGRP | stat.S_IROTH

logger = get_logger("config")


def is_shared(mode: int) -> bool:
    """True if a file of *mode* is readable by its group or by others (never on Windows)."""
    return os.name != "nt" and bool(mode & _SHARED)  # Windows has ACLs, not these bits


def warn_if_shared(mode: int, msg: str, *args: object) -> None:
    """Log *msg* % *args* (plus the mode, ``-rw-r--r--``) as a WARNING if :func:`is_shared`."""
    if is_shared(mode):
        safe_log(logger, logging.WARNING, msg + " (%s)", *args, stat.filemode(mode))


def read_token_file(path: str) -> str:
    """
    Return the token held in the file at *path*, surrounding whitespace stripped.

    The file is opened without blocking and must be a regular file, so that a
    FIFO or a folder named by mistake fails at once instead of hanging.

    Raises:
        ConfigError: The file cannot be read, is not a regular file, is too
            large, is not UTF-8 text, or holds nothing but whitespace. The
            message names :data:`TOKEN_FILE_VAR` and the path, never the contents.
    """
    where = f"{TOKEN_FILE_VAR}: {path!r}"
    if not path:
        raise ConfigError(
            f"{TOKEN_FILE_VAR}: set to an empty string; name the token file, or unset it"
        )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        # Our own words for a NUL: the interpreter's differ from version to version.
        reason = exc.strerror if isinstance(exc, OSError) else "the path holds a NUL character"
        raise ConfigError(f"{TOKEN_FILE_VAR}: cannot read {path!r}: {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{where} is not a regular file ({stat.filemode(info.st_mode)})")
        chunks = []
        size = 0
        while size <= MAX_TOKEN_FILE:
            chunk = os.read(fd, MAX_TOKEN_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"{TOKEN_FILE_VAR}: cannot read {path!r}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_TOKEN_FILE:
        raise ConfigError(f"{where} is larger than {MAX_TOKEN_FILE} bytes; is it the token file?")
    try:
        token = b"".join(chunks).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"{where} is empty")
    warn_if_shared(
        info.st_mode,
        "%s: %r is readable by group or others; the token is a secret: chmod 600 it",
        TOKEN_FILE_VAR,
        path,
    )
    return token
