"""The one HTTP client of the providers' APIs (Creem, Waffo; Stripe has its SDK).

One `requests.Session` per process, made on first use (the import costs cold-start time only
where a provider is called): warm invocations reuse its connections and TLS sessions. A
connection that cannot be made is retried twice (nothing reached the provider); a request that
was sent is never retried here, since creating a checkout twice is the provider's to dedupe (the
order id travels with it). Any failure to get an answer is a ProviderError (503 to the caller),
logged with the provider and the error's type, never the request's body or credentials.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from billing.errors import ProviderError
from billing.restore import after_restore

if TYPE_CHECKING:
    import requests

logger = Logger(child=True)

# (connect, read) seconds: well inside the checkout function's Timeout.
TIMEOUT = (3.05, 8.0)


@functools.cache
def session() -> requests.Session:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    client = requests.Session()
    retry = Retry(total=2, connect=2, read=0, status=0, other=0, backoff_factor=0.2)
    client.mount("https://", HTTPAdapter(max_retries=retry))
    client.mount("http://", HTTPAdapter(max_retries=retry))
    return client


@after_restore
def forget_session() -> None:
    """After a SnapStart restore: the session (and its pooled connections) made again."""
    session.cache_clear()


def post(provider: str, url: str, *, order_id: str, **kwargs: Any) -> requests.Response:
    """POST to a provider's API; the response whatever its status (the caller judges it)."""
    import requests

    try:
        return session().post(url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        logger.warning(
            f"{provider} unreachable",
            extra={"order_id": order_id, "error_type": type(exc).__name__},
        )
        raise ProviderError() from exc
