"""
The remote's batch offer, and sending events under it: what both HTTP transports share.

The wire rules (the offer's form, the batch's body, the answer table) are in
:mod:`.protocol`; this is the one place that decides, per call, whether events
go out as one ``POST {url}/updates`` or one ``POST /update`` each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Callable, Optional

from .._deadline import Answer
from .._exceptions import DeliveryError
from .._logutil import get_logger, safe_log
from .._model import Event
from .._secrets import Secrets
from .protocol import BATCH_CAP, encode_batch, judge_batch, parse_offer, with_event_ids

__all__ = ["BatchOffer"]

log = get_logger("transport")

#: Sends events one request each (the transport's own one-by-one path).
OneByOne = Callable[[Sequence[Event]], list[Optional[DeliveryError]]]


class BatchOffer:
    """
    What the latest health answer offered, and sending events under that offer.

    Each HTTP transport has one. The offer is one int, replaced whole by the
    health thread (or by a worker when ``/updates`` turns out to be missing):
    reads and writes need no lock.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.offer = 0  # the latest health answer's batch.max; 0: none

    def heard(self, answer: Answer) -> None:
        """Take the offer of a health answer (each answer replaces the one before)."""
        self.offer = parse_offer(answer.status, answer.data)

    def max_batch(self) -> int:
        """``min(batch.max, 500)`` while the latest health answer offers batches, else 1."""
        offer = self.offer
        return min(offer, BATCH_CAP) if offer > 1 else 1

    def send_many(
        self,
        updates: Sequence[Event],
        *,
        post: Callable[[bytes], Answer],
        one_by_one: OneByOne,
        secrets: Secrets,
    ) -> list[Optional[DeliveryError]]:
        """
        Send *updates* as ``POST {url}/updates`` (``post``) while batches are offered.

        Without an offer (or with one event), one request each (``one_by_one``).
        404, 405, 415 or 501 withdraw the offer, and the same events go out one
        request each, at once, with the same event ids.
        """
        limit = self.max_batch()
        if len(updates) <= 1 or limit <= 1:
            return one_by_one(updates)
        events = with_event_ids(updates)
        results: list[Optional[DeliveryError]] = []
        for start in range(0, len(events), limit):  # the offer may have shrunk meanwhile
            chunk = events[start : start + limit]
            if len(chunk) == 1:
                results += one_by_one(chunk)
                continue
            try:
                answer = post(encode_batch(chunk))
            except DeliveryError as exc:
                results += [exc] * len(chunk)
                continue
            verdict = judge_batch(answer, len(chunk), secrets)
            if verdict is None:
                self.offer = 0
                safe_log(
                    log,
                    logging.INFO,
                    "%s answered POST /updates with HTTP %d: it takes no batches after all; "
                    "sending one update per request until a health answer offers batches again",
                    self.url,
                    answer.status,
                )
                verdict = one_by_one(chunk)
            results += verdict
        return results
