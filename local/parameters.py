"""The local values of the template's deployment parameters (the API's and console's base
URL, the dev issuer, the providers' API bases: the sandbox unless <PROVIDER>_API_BASE says)."""

from __future__ import annotations

from collections.abc import Mapping

from local.auth import DEV_AUDIENCE

PROVIDERS = ("stripe", "epay", "creem", "waffo")


def parameter_overrides(port: int, environ: Mapping[str, str]) -> dict[str, str]:
    base = f"http://127.0.0.1:{port}"
    overrides = {
        "ApiBaseUrl": base,
        "ConsoleUrl": base,
        "JwtIssuer": f"{base}/_local",
        "JwtAudience": DEV_AUDIENCE,
    }
    for provider in PROVIDERS:
        variable = f"{provider.upper()}_API_BASE"
        parameter = f"{provider.capitalize()}ApiBase"
        overrides[parameter] = environ.get(variable, f"{base}/_local/sandbox/{provider}")
    return overrides
