"""
The receiver's status page: :class:`StatusPage`, WSGI middleware in front of the receiver.

The page is plain HTML, one script (``static/app.js``) and one style sheet
(``static/style.css``), all package data: nothing is fetched from another host,
nothing is built at run time. The script reads the receiver's operator routes
(``/summary``, ``/nodes``, ``/servers``, ``/servers/ID``) with the session
cookie this middleware sets, and polls them every 2 s while the tab is visible.
"""

from __future__ import annotations

from .middleware import CSP, OPERATOR_KEY, StatusPage

__all__ = ["CSP", "OPERATOR_KEY", "StatusPage"]
