"""quota_meter: meter LLM usage against the quota backend (API.md "Meter client").

    from quota_meter import Meter, Rejected
    meter = Meter("MeterUsageFunction")
    result = meter.charge(user_id="u1", model="gpt-4o", prompt_tokens=12, completion_tokens=30)

`quota_meter.litellm.callback` is the LiteLLM proxy callback (import it inside the proxy).
"""

from quota_meter.events import ACTIONS, MAX_BATCH_EVENTS, new_request_id
from quota_meter.hold import Hold
from quota_meter.meter import DEFAULT_FUNCTION, Meter
from quota_meter.results import MeterError, QuotaMeterError, Rejected, Result
from quota_meter.retry import RetryPolicy

__all__ = [
    "ACTIONS",
    "DEFAULT_FUNCTION",
    "MAX_BATCH_EVENTS",
    "Hold",
    "Meter",
    "MeterError",
    "QuotaMeterError",
    "Rejected",
    "Result",
    "RetryPolicy",
    "new_request_id",
]
