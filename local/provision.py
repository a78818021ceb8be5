"""Creates the template's tables (their streams), queues, SNS topics, EventBridge buses,
parameters and secrets in the embedded AWS.

Other resource types (Cognito, alarms, layers, HttpApi) have no local effect; EventBridge
rules are the stack's own (local/eventbridge.py); IAM is not provisioned but enforced
(local/iam).
Secrets are filled from the environment (``Metadata.Local.FromEnvironment``) with the dev
defaults below; see local/README.md.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local.aws import EmbeddedAws
from local.template import (
    EVENT_BUS_TYPE,
    PARAMETER_TYPE,
    QUEUE_TYPE,
    SECRET_TYPE,
    TABLE_TYPE,
    TOPIC_TYPE,
    Resource,
    Template,
    TemplateError,
)

log = logging.getLogger("local.provision")

# Dev defaults for provider credentials and keys (documented in local/README.md). They are
# only ever used against the sandbox; none of them is a real credential.
DEV_DEFAULTS: dict[str, str] = {
    "STRIPE_SECRET_KEY": "sk_test_local",
    "STRIPE_WEBHOOK_SECRET": "whsec_local",
    "EPAY_PID": "1001",
    "EPAY_KEY": "epay_local_key",
    "CREEM_API_KEY": "creem_test_local",
    "CREEM_WEBHOOK_SECRET": "creem_whsec_local",
    "WAFFO_API_KEY": "waffo_local_key",
    "CODE_HASH_KEY": "local-dev-code-hash-key-0123456789abcdef0123456789abcdef01234567",
}


@dataclass(frozen=True)
class WaffoKeys:
    """RSA keys for the Waffo stand-in. The merchant's private key and the platform's public
    key go into our secret; the sandbox keeps the other halves to verify and to sign."""

    merchant_private_pem: str
    merchant_public_pem: str
    platform_private_pem: str | None
    platform_public_pem: str


def _public_pem(private_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _new_private_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def waffo_keys(environ: Mapping[str, str]) -> WaffoKeys:
    """Keys from the environment where set, else a fresh pair per stack start."""
    merchant_private = environ.get("WAFFO_MERCHANT_PRIVATE_KEY") or _new_private_pem()
    platform_private = environ.get("WAFFO_PLATFORM_PRIVATE_KEY")
    platform_public = environ.get("WAFFO_PLATFORM_PUBLIC_KEY")
    if not platform_public:
        platform_private = platform_private or _new_private_pem()
        platform_public = _public_pem(platform_private)
    elif platform_private is None:
        log.warning(
            "WAFFO_PLATFORM_PUBLIC_KEY is set without WAFFO_PLATFORM_PRIVATE_KEY: "
            "the Waffo sandbox cannot sign webhooks"
        )
    return WaffoKeys(
        merchant_private_pem=merchant_private,
        merchant_public_pem=_public_pem(merchant_private),
        platform_private_pem=platform_private,
        platform_public_pem=platform_public,
    )


def local_environment(environ: Mapping[str, str], keys: WaffoKeys) -> dict[str, str]:
    """Provider variables as the stack sees them: the environment over the dev defaults
    (a variable set but empty stays empty: that is how a provider is switched off)."""
    values = dict(DEV_DEFAULTS)
    values["WAFFO_MERCHANT_PRIVATE_KEY"] = keys.merchant_private_pem
    values["WAFFO_PLATFORM_PUBLIC_KEY"] = keys.platform_public_pem
    for name in values:
        if name in environ:
            values[name] = environ[name]
    return values


@dataclass
class Provisioned:
    tables: dict[str, str] = field(default_factory=dict)  # logical id -> table name
    queues: dict[str, str] = field(default_factory=dict)  # logical id -> queue URL
    parameters: dict[str, str] = field(default_factory=dict)  # logical id -> name
    secrets: dict[str, str] = field(default_factory=dict)  # logical id -> ARN
    streams: dict[str, str] = field(default_factory=dict)  # table logical id -> stream ARN
    topics: dict[str, str] = field(default_factory=dict)  # logical id -> topic ARN
    event_buses: dict[str, str] = field(default_factory=dict)  # logical id -> bus name


class Provisioner:
    def __init__(
        self,
        template: Template,
        aws: EmbeddedAws,
        environment: Mapping[str, str],
        settings_overrides: Mapping[str, Path] | None = None,
    ) -> None:
        self.template = template
        self.aws = aws
        self.environment = environment
        self.settings_overrides = dict(settings_overrides or {})
        self.result = Provisioned()

    def run(self) -> Provisioned:
        types = (TABLE_TYPE, QUEUE_TYPE, TOPIC_TYPE, EVENT_BUS_TYPE, PARAMETER_TYPE, SECRET_TYPE)
        creators = {
            TABLE_TYPE: self.create_table,
            QUEUE_TYPE: self.create_queue,
            TOPIC_TYPE: self.create_topic,
            EVENT_BUS_TYPE: self.create_event_bus,
            PARAMETER_TYPE: self.create_parameter,
            SECRET_TYPE: self.create_secret,
        }
        for resource in self.template.creation_order(types):
            try:
                creators[resource.type](resource)
            except TemplateError:
                raise
            except Exception as exc:
                raise TemplateError(
                    f"cannot create {resource.logical_id} ({resource.type}): {exc}"
                ) from exc
        return self.result

    # ------------------------------------------------------------ DynamoDB

    def create_table(self, resource: Resource) -> None:
        props = self.template.resolve(resource.properties)
        name = self.template.table_name(resource.logical_id)
        billing = props.get("BillingMode", "PROVISIONED")
        request: dict[str, Any] = {
            "TableName": name,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": billing,
        }
        throughput = props.get("ProvisionedThroughput")
        if billing == "PROVISIONED":
            request["ProvisionedThroughput"] = _throughput(throughput)
        gsis = []
        for index in props.get("GlobalSecondaryIndexes") or []:
            gsi = {k: index[k] for k in ("IndexName", "KeySchema", "Projection")}
            if billing == "PROVISIONED":
                gsi["ProvisionedThroughput"] = _throughput(index.get("ProvisionedThroughput"))
            gsis.append(gsi)
        if gsis:
            request["GlobalSecondaryIndexes"] = gsis
        lsis = [
            {k: index[k] for k in ("IndexName", "KeySchema", "Projection")}
            for index in props.get("LocalSecondaryIndexes") or []
        ]
        if lsis:
            request["LocalSecondaryIndexes"] = lsis
        if props.get("StreamSpecification"):
            request["StreamSpecification"] = {
                "StreamEnabled": True,
                "StreamViewType": props["StreamSpecification"]["StreamViewType"],
            }
        client = self.aws.client("dynamodb")
        created = client.create_table(**request)["TableDescription"]
        if created.get("LatestStreamArn"):
            self.template.set_physical(resource.logical_id, StreamArn=created["LatestStreamArn"])
            self.result.streams[resource.logical_id] = created["LatestStreamArn"]
        ttl = props.get("TimeToLiveSpecification")
        if ttl and str(ttl.get("Enabled")).lower() == "true":
            client.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        self.result.tables[resource.logical_id] = name

    # ------------------------------------------------------------ SQS

    _QUEUE_ATTRIBUTES = (
        "DelaySeconds",
        "MaximumMessageSize",
        "MessageRetentionPeriod",
        "VisibilityTimeout",
        "ContentBasedDeduplication",
        "DeduplicationScope",
        "FifoThroughputLimit",
    )

    def create_queue(self, resource: Resource) -> None:
        props = self.template.resolve(resource.properties)
        name = self.template.queue_name(resource.logical_id)
        attributes: dict[str, str] = {}
        if str(props.get("FifoQueue", False)).lower() == "true":
            attributes["FifoQueue"] = "true"
        for key in self._QUEUE_ATTRIBUTES:
            if key in props:
                attributes[key] = _attribute_string(props[key])
        redrive = props.get("RedrivePolicy")
        if redrive:
            policy = json.loads(redrive) if isinstance(redrive, str) else redrive
            attributes["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": policy["deadLetterTargetArn"],
                    "maxReceiveCount": int(policy["maxReceiveCount"]),
                }
            )
        url = self.aws.client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        wait = props.get("ReceiveMessageWaitTimeSeconds")
        if wait is not None:
            # Kept out of moto (it would block under the global lock); the wrapper emulates it.
            self.aws.set_default_receive_wait(name, int(wait))
        expected = self.template.queue_url(resource.logical_id)
        if url != expected:
            self.template.set_physical(resource.logical_id, Ref=url, QueueUrl=url)
        self.result.queues[resource.logical_id] = url

    # ------------------------------------------------------------ SNS and EventBridge

    def create_topic(self, resource: Resource) -> None:
        # Only what changes delivery; subscriptions and encryption have no local effect.
        props = resource.properties
        name = self.template.topic_name(resource.logical_id)
        attributes = {}
        if _true(self.template.resolve(props.get("FifoTopic", False))):
            attributes["FifoTopic"] = "true"
            if "ContentBasedDeduplication" in props:
                value = self.template.resolve(props["ContentBasedDeduplication"])
                attributes["ContentBasedDeduplication"] = _attribute_string(value)
        arn = self.aws.client("sns").create_topic(Name=name, Attributes=attributes)["TopicArn"]
        self.result.topics[resource.logical_id] = arn

    def create_event_bus(self, resource: Resource) -> None:
        name = self.template.event_bus_name(resource.logical_id)
        self.aws.client("events").create_event_bus(Name=name)
        self.result.event_buses[resource.logical_id] = name

    # ------------------------------------------------------------ SSM

    def create_parameter(self, resource: Resource) -> None:
        props = self.template.resolve(resource.properties)
        name = self.template.parameter_name(resource.logical_id)
        value_file = self.settings_overrides.get(resource.logical_id)
        if value_file is None and resource.local_metadata.get("ValueFile"):
            value_file = self.template.resolve_path(str(resource.local_metadata["ValueFile"]))
        if value_file is not None:
            try:
                value = value_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise TemplateError(
                    f"{resource.logical_id}: cannot read its local value file {value_file}: {exc}"
                ) from exc
        else:
            value = str(props.get("Value", ""))
        request: dict[str, Any] = {
            "Name": name,
            "Value": value,
            "Type": props.get("Type", "String"),
            "Overwrite": True,
        }
        if props.get("Tier"):
            request["Tier"] = props["Tier"]
        if props.get("Description"):
            request["Description"] = props["Description"]
        self.aws.client("ssm").put_parameter(**request)
        self.result.parameters[resource.logical_id] = name

    # ------------------------------------------------------------ Secrets Manager

    def create_secret(self, resource: Resource) -> None:
        props = self.template.resolve(resource.properties)
        name = self.template.secret_name(resource.logical_id)
        value = self.secret_value(resource, props)
        response = self.aws.client("secretsmanager").create_secret(
            Name=name, SecretString=value, Description=str(props.get("Description", ""))
        )
        arn = response["ARN"]
        self.template.set_physical(resource.logical_id, Ref=arn, Id=arn)
        self.result.secrets[resource.logical_id] = arn

    def secret_value(self, resource: Resource, props: dict[str, Any]) -> str:
        source = resource.local_metadata.get("FromEnvironment")
        if isinstance(source, dict):
            return json.dumps({str(k): self._env(str(v)) for k, v in source.items()})
        if isinstance(source, str):
            return self._env(source)
        if "SecretString" in props:
            return str(props["SecretString"])
        generate = props.get("GenerateSecretString") or {}
        password = _password(generate)
        template_json = generate.get("SecretStringTemplate")
        key = generate.get("GenerateStringKey")
        if template_json and key:
            document = json.loads(template_json)
            document[key] = password
            return json.dumps(document)
        return password

    def _env(self, name: str) -> str:
        if name in self.environment:
            return self.environment[name]
        return DEV_DEFAULTS.get(name, "")


def _throughput(value: Any) -> dict[str, int]:
    value = value or {}
    return {
        "ReadCapacityUnits": int(value.get("ReadCapacityUnits", 5)),
        "WriteCapacityUnits": int(value.get("WriteCapacityUnits", 5)),
    }


def _attribute_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _password(spec: Mapping[str, Any]) -> str:
    length = int(spec.get("PasswordLength", 32))
    alphabet = string.ascii_letters + string.digits
    if not _true(spec.get("ExcludePunctuation")):
        alphabet += "!#$%&()*+,-.:;<=>?[]^_{|}~"
    if _true(spec.get("ExcludeUppercase")):
        alphabet = "".join(c for c in alphabet if not c.isupper())
    if _true(spec.get("ExcludeLowercase")):
        alphabet = "".join(c for c in alphabet if not c.islower())
    if _true(spec.get("ExcludeNumbers")):
        alphabet = "".join(c for c in alphabet if not c.isdigit())
    excluded = str(spec.get("ExcludeCharacters", ""))
    alphabet = "".join(c for c in alphabet if c not in excluded)
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _true(value: Any) -> bool:
    return str(value).lower() == "true"
