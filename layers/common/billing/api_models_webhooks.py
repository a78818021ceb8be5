"""The providers' webhook acknowledgement."""

from billing.api_models import _Body


class WebhookAck(_Body):
    """The provider's acknowledgement: Stripe and Creem get {"received": true}, Waffo its
    signed {"message": "success"}."""

    received: bool | None = None
    message: str | None = None
