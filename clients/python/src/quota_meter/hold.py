"""A hold on quota for one request: reserved on entry, then settled once or released.

Made by `Meter.hold(...)`. The block calls `.settle(prompt_tokens=, completion_tokens=)`;
leaving it without a settle, or with an exception, releases the hold, never both. A
settle that fails in transit leaves the hold alone (the usage happened: send the settle
again with the same request_id, `MeterError.request_ids`); a release that fails is only
logged, since the function's sweeper drops every hold at the end of its lifetime anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quota_meter.results import MeterError, Result

if TYPE_CHECKING:
    from quota_meter.meter import Meter

logger = logging.getLogger("quota_meter")


class Hold:
    def __init__(
        self,
        meter: Meter,
        request_id: str,
        user_id: str,
        model: str,
        reserved: Result,
        extra: Mapping[str, Any],
    ) -> None:
        self.meter = meter
        self.request_id = request_id
        self.user_id = user_id
        self.model = model
        self.reserved = reserved
        self.settled: Result | None = None
        self.released: Result | None = None
        self._extra = dict(extra)
        self._state = "open"  # open → settling → settled, or open → released

    @property
    def state(self) -> str:
        return self._state

    def settle(self, *, prompt_tokens: int, completion_tokens: int) -> Result:
        """Bill the actual usage in place of the hold (once)."""
        if self._state != "open":
            raise RuntimeError(f"the hold {self.request_id} is {self._state}, not open")
        self._state = "settling"  # from here on the hold is never released by us
        result = self.meter.settle(
            request_id=self.request_id,
            user_id=self.user_id,
            model=self.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            **self._extra,
        )
        self._state = "settled"
        self.settled = result
        return result

    def _release_if_open(self) -> None:
        if self._state != "open":
            return
        self._state = "released"
        try:
            self.released = self.meter.release(
                request_id=self.request_id,
                user_id=self.user_id,
                model=self.model,
                **self._extra,
            )
        except MeterError as exc:
            logger.warning(
                "release of hold %s failed (%s); it expires by itself", self.request_id, exc
            )
