"""The IAM check in front of moto (and of the Lambda Invoke API).

Each function's workers and SQS pollers sign with credentials of its own (derived from its
logical id); a request signed with them is authorized against exactly that function's role
before it reaches moto, and refused with the service's AccessDenied otherwise, so nothing
is written. Any other access key (the stack's provisioning, tests' boto3 clients with the
"testing" keys, tools) is the account's admin and is not restricted.

Every refusal is kept (``GET /_local/iam``) and logged as one line; allowed calls are counted
per function and action.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from local.iam.errors import Refusal, Response, access_denied, lambda_access_denied
from local.iam.policy import Decision, authorize
from local.iam.requests import ArnBuilder, required
from local.iam.roles import FunctionRole, function_roles
from local.template import ACCOUNT_ID, PARTITION, REGION, STACK_NAME, Template

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

    from local.aws import CallInfo

log = logging.getLogger("local.iam")

MAX_KEPT_DENIALS = 1000


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str


def function_credentials(function_id: str) -> Credentials:
    """A function's own (dummy) credentials, the same on every start of the stack."""
    digest = hashlib.sha256(f"{STACK_NAME}/{function_id}".encode()).digest()
    letters = base64.b32encode(digest).decode().rstrip("=")
    return Credentials(
        access_key_id="ASIA" + letters[:16],  # ASIA: temporary credentials, as Lambda's are
        secret_access_key=base64.b64encode(digest).decode()[:40],
        session_token=base64.b64encode(f"local-session/{function_id}".encode()).decode(),
    )


def access_key_of(authorization: str, query_string: str = "") -> str | None:
    """The access key id a SigV4 request was signed with (header or presigned URL)."""
    if "Credential=" in authorization:
        return authorization.split("Credential=", 1)[1].split("/", 1)[0].strip() or None
    credential = parse_qs(query_string).get("X-Amz-Credential")
    return credential[0].split("/", 1)[0] if credential else None


@dataclass(frozen=True)
class Denial:
    function: str
    action: str
    resource: str
    operation: str  # service.Operation of the refused request
    explicit: bool
    time: str


def _secret_lookup(secret_arns: Mapping[str, str]) -> Any:
    arns = list(secret_arns.values())

    def lookup(secret_id: str) -> str | None:
        for arn in arns:
            name = arn.split(":secret:", 1)[-1][:-7]  # the ARN ends in -<6 random characters>
            partial = arn[:-7]
            if secret_id in (arn, name, partial):
                return arn
        return None

    return lookup


class Enforcer:
    def __init__(self, roles: Mapping[str, FunctionRole], arns: ArnBuilder) -> None:
        self.roles = dict(roles)
        self.arns = arns
        self._by_key = {function_credentials(fid).access_key_id: r for fid, r in roles.items()}
        if len(self._by_key) != len(self.roles):  # pragma: no cover - sha256 prefixes
            raise RuntimeError("two functions derived the same access key id")
        self._lock = threading.Lock()
        self._denials: list[Denial] = []
        self._denied: Counter[str] = Counter()
        self._allowed_calls: Counter[str] = Counter()
        self._allowed_actions: dict[str, Counter[str]] = {fid: Counter() for fid in roles}

    @classmethod
    def from_template(cls, template: Template, secret_arns: Mapping[str, str]) -> Enforcer:
        """Roles from the SAM transform of the template; secret_arns: logical id -> ARN of the
        provisioned secrets (their ARNs carry a random suffix)."""
        arns = ArnBuilder(PARTITION, REGION, ACCOUNT_ID, _secret_lookup(secret_arns))
        return cls(function_roles(template), arns)

    def credentials(self, function_id: str) -> Credentials:
        return function_credentials(function_id)

    def role_for_key(self, access_key_id: str | None) -> FunctionRole | None:
        return self._by_key.get(access_key_id or "")

    # ------------------------------------------------------------ checks

    def check(
        self, role: FunctionRole, service: str, operation: str, params: Mapping[str, Any], path: str
    ) -> Refusal | None:
        """None if the role may make the request; else why not (recorded and logged)."""
        needs = required(service, operation, params, path, self.arns)
        for need in needs:
            verdict = authorize(role.policies, role.boundary, need.action, need.resource)
            if not verdict.allowed:
                refusal = Refusal(
                    principal_arn=role.principal_arn,
                    action=need.action,
                    resource=need.resource,
                    explicit=verdict.decision is Decision.EXPLICIT_DENY,
                    by_boundary=verdict.by_boundary,
                )
                self._record_denial(role, f"{service}.{operation}", refusal)
                return refusal
        with self._lock:
            self._allowed_calls[role.function_id] += 1
            for need in needs:
                self._allowed_actions[role.function_id][need.action] += 1
        return None

    def check_aws_request(self, environ: WSGIEnvironment, call: CallInfo) -> Response | None:
        """For the embedded AWS: the AccessDenied response, or None to let moto answer."""
        key = access_key_of(
            str(environ.get("HTTP_AUTHORIZATION", "")), str(environ.get("QUERY_STRING", ""))
        )
        role = self.role_for_key(key)
        if role is None:
            return None  # the account's admin (the stack itself, tests, tools)
        params = _params(environ, call)
        refusal = self.check(
            role, call.service, call.operation, params, str(environ.get("PATH_INFO", ""))
        )
        if refusal is None:
            return None
        endpoint = f"http://{environ.get('HTTP_HOST', '127.0.0.1')}"
        return access_denied(call.service, call.json_protocol, refusal, endpoint)

    def check_invoke(self, authorization: str, function_name: str) -> Response | None:
        """For the Lambda Invoke API: lambda:InvokeFunction on the function's ARN."""
        role = self.role_for_key(access_key_of(authorization))
        if role is None:
            return None
        refusal = self.check(role, "lambda", "Invoke", {"FunctionName": function_name}, "")
        return None if refusal is None else lambda_access_denied(refusal)

    def _record_denial(self, role: FunctionRole, operation: str, refusal: Refusal) -> None:
        denial = Denial(
            function=role.function_id,
            action=refusal.action,
            resource=refusal.resource,
            operation=operation,
            explicit=refusal.explicit,
            time=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
        with self._lock:
            self._denied[role.function_id] += 1
            self._denials.append(denial)
            del self._denials[:-MAX_KEPT_DENIALS]
        reason = "explicit deny" if refusal.explicit else "no policy allows it"
        if refusal.by_boundary:
            reason += " (permissions boundary)"
        log.warning(
            "IAM AccessDenied: %s may not %s on %s (%s, %s)",
            role.function_id,
            refusal.action,
            refusal.resource,
            operation,
            reason,
        )

    # ------------------------------------------------------------ report

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enforced": True,
                "denied_total": sum(self._denied.values()),
                "denials": [asdict(d) for d in self._denials],
                "functions": {
                    fid: {
                        "principal": role.principal_arn,
                        "allowed_calls": self._allowed_calls[fid],
                        "allowed": dict(sorted(self._allowed_actions[fid].items())),
                        "denied_calls": self._denied[fid],
                    }
                    for fid, role in sorted(self.roles.items())
                },
            }


def _params(environ: WSGIEnvironment, call: CallInfo) -> dict[str, Any]:
    if call.json_protocol:
        try:
            parsed = json.loads(call.body or b"{}")
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    query = parse_qs(str(environ.get("QUERY_STRING", "")))
    if str(environ.get("CONTENT_TYPE", "")).startswith("application/x-www-form-urlencoded"):
        query.update(parse_qs(call.body.decode("utf-8", "replace")))
    return {key: values[0] for key, values in query.items()}
