"""Payment providers behind one interface (billing.payments.providers.base.Provider).

Provider modules are imported lazily: a handler pays the import of an SDK (stripe,
cryptography) only for the provider it actually uses.
"""

from __future__ import annotations

import importlib

from billing.payments.providers.base import Provider

METHODS = ("stripe", "epay", "creem", "waffo")


def get_provider(method: str) -> Provider:
    if method not in METHODS:
        raise KeyError(method)
    module = importlib.import_module(f"billing.payments.providers.{method}")
    provider: Provider = module.PROVIDER
    return provider
