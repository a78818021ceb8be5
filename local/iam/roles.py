"""Each function's role and policies, as AWS would attach them after deploying the template.

The template goes through the real SAM transform (aws-sam-translator, what ``sam`` runs), so
SAM policy templates (DynamoDBCrudPolicy, SQSSendMessagePolicy, ...), inline statements and
what SAM adds by itself (the basic execution role, Tracing's X-Ray policy, the SQS event
source's poller permissions) come out exactly as CloudFormation receives them. Their
intrinsics are then resolved to the local ARNs with local/template.py. AWS managed policies
are documents AWS owns: the few the stack needs are in managed_policies.json.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from local.iam.policy import Policy, PolicyError
from local.template import (
    ACCOUNT_ID,
    FUNCTION_TYPE,
    PARTITION,
    PSEUDO_PARAMETERS,
    REGION,
    STACK_NAME,
    Template,
    TemplateError,
)

log = logging.getLogger("local.iam")

MANAGED_POLICIES_FILE = Path(__file__).with_name("managed_policies.json")
SAM_TRANSFORM = "AWS::Serverless-2016-10-31"
ROLE_TYPE = "AWS::IAM::Role"
POLICY_TYPE = "AWS::IAM::Policy"
MANAGED_POLICY_TYPE = "AWS::IAM::ManagedPolicy"


@dataclass(frozen=True)
class FunctionRole:
    function_id: str
    role_logical_id: str
    role_name: str
    policies: tuple[Policy, ...]
    boundary: tuple[Policy, ...] | None = None  # a permissions boundary limits the policies

    @property
    def principal_arn(self) -> str:
        """What AWS names in its errors: the role's session, named after the function."""
        return f"arn:{PARTITION}:sts::{ACCOUNT_ID}:assumed-role/{self.role_name}/{self.function_id}"


@lru_cache(maxsize=1)
def managed_policies() -> dict[str, dict[str, Any]]:
    """ARN -> document of the AWS managed policies the stack knows."""
    data = json.loads(MANAGED_POLICIES_FILE.read_text(encoding="utf-8"))
    policies: dict[str, dict[str, Any]] = data["policies"]
    return policies


def _managed_policy_names() -> dict[str, str]:
    # SAM turns a bare policy name in a function's Policies into its ARN with this map.
    return {arn.rsplit("/", 1)[-1]: arn for arn in managed_policies()}


# ---------------------------------------------------------------- the SAM transform


def _placeholder_code(raw: dict[str, Any]) -> None:
    """Local code paths become S3 locations, as ``sam validate`` does: SAM only accepts S3
    URIs, and where the code lives changes nothing in IAM."""
    sections: list[tuple[str, dict[str, Any]]] = [
        (logical_id, body.get("Properties") or {})
        for logical_id, body in (raw.get("Resources") or {}).items()
        if isinstance(body, dict)
    ]
    globals_ = raw.get("Globals") or {}
    sections += [(name, body) for name, body in globals_.items() if isinstance(body, dict)]
    for name, properties in sections:
        for key in ("CodeUri", "ContentUri", "DefinitionUri"):
            if isinstance(properties.get(key), str) and not properties[key].startswith("s3://"):
                properties[key] = f"s3://local-stack-code/{name}"


def sam_transform(template: Template) -> dict[str, Any]:
    """The template as CloudFormation receives it from the SAM transform."""
    raw = copy.deepcopy(template.raw)
    transforms = raw.get("Transform")
    names = transforms if isinstance(transforms, list) else [transforms]
    if SAM_TRANSFORM not in names:
        return raw
    _placeholder_code(raw)
    import boto3
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    parameters: dict[str, Any] = {
        name: ",".join(value) if isinstance(value, list) else value
        for name, value in template.parameters.items()
    }
    parameters.update(PSEUDO_PARAMETERS)
    # The session only tells SAM the region; nothing is called with it.
    session = boto3.session.Session(
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - never used to sign anything
    )
    translator = Translator(None, Parser(), boto_session=session)
    try:
        transformed: dict[str, Any] = translator.translate(
            raw, parameter_values=parameters, get_managed_policy_map=_managed_policy_names
        )
    except InvalidDocumentException as exc:
        causes = "; ".join(cause.message for cause in exc.causes)
        raise TemplateError(f"the SAM transform refused the template: {causes}") from exc
    return transformed


# ---------------------------------------------------------------- roles of the functions


def function_roles(template: Template) -> dict[str, FunctionRole]:
    """Every function's role with its policies resolved to local ARNs."""
    resources: dict[str, Any] = sam_transform(template).get("Resources") or {}
    reader = _PolicyReader(template, resources)
    roles: dict[str, FunctionRole] = {}
    for function_id in template.function_ids():
        roles[function_id] = reader.function_role(function_id)
    return roles


def _logical_id_of_arn(value: Any) -> str | None:
    if isinstance(value, Mapping) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        if isinstance(target, str):
            target = target.split(".", 1)
        if isinstance(target, list) and len(target) == 2 and target[1] == "Arn":
            return str(target[0])
    return None


def _ref(value: Any) -> str | None:
    if isinstance(value, Mapping) and set(value) == {"Ref"}:
        return str(value["Ref"])
    return None


class _PolicyReader:
    def __init__(self, template: Template, resources: dict[str, Any]) -> None:
        self.template = template
        self.resources = resources

    def _exists(self, body: Mapping[str, Any]) -> bool:
        condition = body.get("Condition")
        return condition is None or self.template.condition(str(condition))

    def function_role(self, function_id: str) -> FunctionRole:
        function = self.resources.get(function_id) or {}
        if function.get("Type") not in ("AWS::Lambda::Function", FUNCTION_TYPE):
            raise TemplateError(f"{function_id}: the SAM transform produced no Lambda function")
        role_value = (function.get("Properties") or {}).get("Role")
        role_id = _logical_id_of_arn(role_value)
        role = self.resources.get(role_id or "")
        if role_id is None or not role or role.get("Type") != ROLE_TYPE:
            raise TemplateError(
                f"{function_id}: its Role {role_value!r} is not a role of this template, so the "
                "local stack cannot know its policies"
            )
        properties = role.get("Properties") or {}
        name = properties.get("RoleName")
        role_name = str(self.template.resolve(name)) if name else f"{STACK_NAME}-{role_id}"[:64]
        policies = [
            *self._inline(role_id, properties.get("Policies") or []),
            *self._managed(role_id, properties.get("ManagedPolicyArns") or []),
            *self._attached(role_id, role_name),
        ]
        boundary_value = properties.get("PermissionsBoundary")
        boundary = None
        if boundary_value is not None:
            boundary = tuple(self._managed(f"{role_id} boundary", [boundary_value]))
        for policy in policies:
            for statement in policy.statements:
                if statement.effect == "Deny" and statement.has_condition:
                    log.warning(
                        "%s: policy %s has a Deny with a Condition; the local stack cannot "
                        "evaluate conditions, so that Deny never applies here",
                        function_id,
                        policy.name,
                    )
        return FunctionRole(function_id, role_id, role_name, tuple(policies), boundary)

    # ------------------------------------------------------------ policy sources

    def _inline(self, role_id: str, items: list[Any]) -> list[Policy]:
        policies = []
        for index, item in enumerate(items):
            item = self.template.resolve(item) if _is_if(item) else item
            if not isinstance(item, Mapping):
                continue  # an Fn::If that resolved to AWS::NoValue
            name = str(item.get("PolicyName") or f"{role_id}Policy{index}")
            policies.append(self._parse(name, item.get("PolicyDocument")))
        return policies

    def _managed(self, role_id: str, items: list[Any]) -> list[Policy]:
        policies = []
        for item in items:
            local_id = _ref(item)
            local = self.resources.get(local_id or "")
            if local and local.get("Type") == MANAGED_POLICY_TYPE:
                document = (local.get("Properties") or {}).get("PolicyDocument")
                policies.append(self._parse(str(local_id), document))
                continue
            arn = self.template.resolve(item)
            document = managed_policies().get(str(arn))
            if document is None:
                raise TemplateError(
                    f"{role_id}: managed policy {arn} has no document in "
                    f"{MANAGED_POLICIES_FILE.name}; add it there from AWS's documentation"
                )
            policies.append(self._parse(str(arn), document))
        return policies

    def _attached(self, role_id: str, role_name: str) -> list[Policy]:
        """AWS::IAM::Policy and AWS::IAM::ManagedPolicy resources naming the role (e.g.
        what SAM connectors generate)."""
        policies = []
        for logical_id, body in self.resources.items():
            if body.get("Type") not in (POLICY_TYPE, MANAGED_POLICY_TYPE) or not self._exists(body):
                continue
            properties = body.get("Properties") or {}
            roles = properties.get("Roles") or []
            if any(_ref(r) == role_id or r == role_name for r in roles):
                policies.append(self._parse(logical_id, properties.get("PolicyDocument")))
        return policies

    # ------------------------------------------------------------ documents

    def _parse(self, name: str, document: Any) -> Policy:
        try:
            return Policy.parse(name, self._resolve_document(name, document))
        except PolicyError as exc:
            raise TemplateError(str(exc)) from exc

    def _resolve_document(self, name: str, document: Any) -> Any:
        if not isinstance(document, Mapping):
            return self.template.resolve(document)
        statements = document.get("Statement")
        items = statements if isinstance(statements, list) else [statements]
        resolved = []
        for statement in items:
            statement = self.template.resolve(statement) if _is_if(statement) else statement
            if isinstance(statement, Mapping):
                resolved.append(self._resolve_statement(name, statement))
        return {**document, "Statement": resolved}

    def _resolve_statement(self, name: str, statement: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in statement.items():
            if key in ("Resource", "NotResource"):
                out[key] = self._resolve_resources(name, value)
            else:
                out[key] = self.template.resolve(value)
        return out

    def _resolve_resources(self, name: str, value: Any) -> Any:
        entries = value if isinstance(value, list) else [value]
        resolved = []
        for entry in entries:
            try:
                result = self.template.resolve(entry)
            except TemplateError as exc:
                # It names something the local stack does not emulate (an SNS topic, ...):
                # no local request can be on it.
                log.warning("policy %s: resource %r left out locally (%s)", name, entry, exc)
                continue
            resolved += result if isinstance(result, list) else [result]
        if not resolved:
            return [f"arn:{PARTITION}:local:::not-emulated"]
        return [str(r) for r in resolved]


def _is_if(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"Fn::If"}
