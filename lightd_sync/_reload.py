"""What a reload changed, said without revealing the token."""

from __future__ import annotations

from typing import Any

import attrs

from ._config import RemoteConfig

__all__ = ["ReloadResult"]


@attrs.frozen
class ReloadResult:
    """
    What :meth:`SyncEngine.reload` changed.

    Attributes:
        changed: The names of the keys whose values changed, sorted.
        config: The config the engine runs on now.

    .. versionadded:: 0.1.0
    """

    changed: tuple[str, ...]
    config: RemoteConfig

    @classmethod
    def between(cls, old: RemoteConfig, new: RemoteConfig) -> ReloadResult:
        """Compare two configs key by key."""
        names = [a.name for a in attrs.fields(RemoteConfig)]
        changed = tuple(sorted(n for n in names if getattr(old, n) != getattr(new, n)))
        return cls(changed=changed, config=new)

    @property
    def token_changed(self) -> bool:
        """Whether the token changed (its value is never shown)."""
        return "token" in self.changed

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary: changed keys, token changed or not, config redacted."""
        return {
            "changed": list(self.changed),
            "token": "changed" if self.token_changed else "unchanged",
            "config": self.config.redacted(),
        }
