"""The API's response bodies: one pydantic model per resource, strict (a field the handlers
render but a model lacks fails validation, so the OpenAPI document cannot hide it).

Each route names its models in `responses=` (billing.api_docs) and renders its bodies
through them (billing.http.model_response), so the document's schemas are these;
tests/integration/test_openapi_responses.py validates what the handlers render, through the
local stack, against that document.

One module per area, so that a function defines only the models of its own routes (each
class costs import time at every cold start): errors, accounts (and the ledger), usage,
limits, topups, codes, referral, alerts. Import them from their module.
"""
