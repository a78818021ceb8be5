"""Reads the SAM template and resolves it the way CloudFormation would, for one local stack.

The template is the single source of truth: tables, queues, parameters, secrets, functions,
routes and event sources are all read from it. Intrinsics are resolved lazily, so a branch
that is not taken (for example the Cognito side of an ``!If``) never has to be resolvable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STACK_NAME = "quota-local"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
PARTITION = "aws"
HTTP_API_ID = "local"

PSEUDO_PARAMETERS: dict[str, str] = {
    "AWS::StackName": STACK_NAME,
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT_ID,
    "AWS::Partition": PARTITION,
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackId": (
        f"arn:{PARTITION}:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{STACK_NAME}/local"
    ),
}

FUNCTION_TYPE = "AWS::Serverless::Function"
TABLE_TYPE = "AWS::DynamoDB::Table"
QUEUE_TYPE = "AWS::SQS::Queue"
PARAMETER_TYPE = "AWS::SSM::Parameter"
SECRET_TYPE = "AWS::SecretsManager::Secret"  # noqa: S105 - a type name
HTTP_API_TYPE = "AWS::Serverless::HttpApi"
EVENT_BUS_TYPE = "AWS::Events::EventBus"
RULE_TYPE = "AWS::Events::Rule"
TOPIC_TYPE = "AWS::SNS::Topic"
LAYER_TYPES = ("AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion")
EMULATED_EVENT_TYPES = (
    "HttpApi",
    "SQS",
    "Schedule",
    "ScheduleV2",
    "DynamoDB",
    "EventBridgeRule",
    "CloudWatchEvent",
)


class TemplateError(Exception):
    """The template cannot be read or resolved locally."""


class _NoValue:
    """AWS::NoValue: removes the key or list item it is the value of."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


# ---------------------------------------------------------------- YAML with short tags


class CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags into their long (JSON) forms."""


def _construct_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - yaml has no other node kinds
        raise TemplateError(f"unsupported node for !{tag_suffix}")
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        # "!GetAtt A.B.C" means resource A, attribute "B.C".
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag_suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _construct_tag)


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=CloudFormationLoader)  # noqa: S506 - SafeLoader subclass
    except OSError as exc:
        raise TemplateError(f"cannot read template {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TemplateError(f"invalid YAML in {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)")
    return data


# ---------------------------------------------------------------- resolved views


@dataclass(frozen=True)
class Resource:
    logical_id: str
    type: str
    properties: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def local_metadata(self) -> dict[str, Any]:
        local = self.metadata.get("Local")
        return local if isinstance(local, dict) else {}


@dataclass(frozen=True)
class FunctionEvent:
    name: str
    type: str
    properties: dict[str, Any]  # resolved
    raw_properties: dict[str, Any]


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: Path
    handler: str
    runtime: str
    timeout: int
    memory_size: int
    environment: dict[str, str]
    layer_dirs: tuple[Path, ...]
    reserved_concurrency: int | None
    events: tuple[FunctionEvent, ...] = field(default_factory=tuple)

    @property
    def arn(self) -> str:
        return f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT_ID}:function:{self.logical_id}"

    @property
    def handler_file(self) -> Path:
        module, _, _ = self.handler.rpartition(".")
        return self.code_dir / (module.replace(".", "/") + ".py")

    def handler_exists(self) -> bool:
        """Whether the handler's module is in the code dir or a layer (a package counts)."""
        module = self.handler.rpartition(".")[0].replace(".", "/")
        return any(
            (base / f"{module}.py").is_file() or (base / module / "__init__.py").is_file()
            for base in (self.code_dir, *self.layer_dirs)
        )


def find_project_root(start: Path) -> Path:
    """The directory holding pyproject.toml above the template (relative paths start there)."""
    for candidate in (start, *start.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return Path.cwd()


def _is_intrinsic(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    (key,) = value.keys()
    return key == "Ref" or key == "Condition" or str(key).startswith("Fn::")


def sam_merge(global_value: Any, local_value: Any) -> Any:
    """SAM's Globals rules: maps merge (the function wins), lists append, scalars override."""
    if isinstance(global_value, dict) and isinstance(local_value, dict):
        if _is_intrinsic(global_value) or _is_intrinsic(local_value):
            return local_value
        merged = dict(global_value)
        for key, value in local_value.items():
            merged[key] = sam_merge(global_value[key], value) if key in global_value else value
        return merged
    if isinstance(global_value, list) and isinstance(local_value, list):
        return [*global_value, *local_value]
    return local_value


def _to_env_string(value: Any) -> str:
    # CloudFormation turns every environment value into a string.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise TemplateError(f"environment values must be scalars, got {value!r}")
    return str(value)


class Template:
    """One resolved template. Physical ids that only exist once provisioned (secret ARNs,
    queue URLs) are registered by provisioning through :meth:`set_physical`."""

    def __init__(
        self,
        path: Path,
        parameter_overrides: Mapping[str, str] | None = None,
        *,
        root: Path | None = None,
    ) -> None:
        self.path = path.resolve()
        self.dir = self.path.parent
        self.root = root or find_project_root(self.dir)
        self.raw = load_yaml(self.path)
        self.parameters = self._resolve_parameters(parameter_overrides or {})
        self._condition_defs: dict[str, Any] = dict(self.raw.get("Conditions") or {})
        self.conditions: dict[str, bool] = {}
        for name in self._condition_defs:
            self.condition(name)
        self.resources: dict[str, Resource] = {}
        self.skipped: dict[str, str] = {}
        for logical_id, body in (self.raw.get("Resources") or {}).items():
            if not isinstance(body, dict) or "Type" not in body:
                raise TemplateError(f"resource {logical_id} has no Type")
            condition = body.get("Condition")
            if condition is not None and not self.condition(str(condition)):
                self.skipped[logical_id] = str(condition)
                continue
            self.resources[logical_id] = Resource(
                logical_id=logical_id,
                type=str(body["Type"]),
                properties=dict(body.get("Properties") or {}),
                metadata=dict(body.get("Metadata") or {}),
            )
        globals_ = self.raw.get("Globals") or {}
        self.function_globals: dict[str, Any] = dict(globals_.get("Function") or {})
        self.aws_endpoint: str | None = None
        self._physical: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ parameters and conditions

    def _resolve_parameters(self, overrides: Mapping[str, str]) -> dict[str, Any]:
        declared: dict[str, Any] = dict(self.raw.get("Parameters") or {})
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            spec = spec or {}
            if name in overrides:
                value: Any = overrides[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise TemplateError(
                    f"parameter {name} has no Default; pass --parameter {name}=<value>"
                )
            value = "" if value is None else str(value) if not isinstance(value, list) else value
            allowed = spec.get("AllowedValues")
            if allowed is not None and value not in [str(a) for a in allowed]:
                raise TemplateError(f"parameter {name}={value!r} is not one of {allowed}")
            ptype = str(spec.get("Type", "String"))
            if ptype == "CommaDelimitedList" and isinstance(value, str):
                value = [part.strip() for part in value.split(",")] if value else []
            elif ptype.startswith("AWS::SSM::Parameter::Value"):
                raise TemplateError(f"parameter {name}: type {ptype} is not supported locally")
            values[name] = value
        return values

    def condition(self, name: str, _seen: frozenset[str] = frozenset()) -> bool:
        if name in self.conditions:
            return self.conditions[name]
        if name not in self._condition_defs:
            raise TemplateError(f"unknown condition {name}")
        if name in _seen:
            raise TemplateError(f"condition {name} refers to itself")
        result = self._eval_condition(self._condition_defs[name], _seen | {name})
        self.conditions[name] = result
        return result

    def _eval_condition(self, expr: Any, seen: frozenset[str]) -> bool:
        if isinstance(expr, bool):
            return expr
        if not _is_intrinsic(expr):
            raise TemplateError(f"not a condition expression: {expr!r}")
        ((fn, arg),) = expr.items()
        if fn == "Condition":
            return self.condition(str(arg), seen)
        if fn == "Fn::Equals":
            left, right = (self.resolve(v) for v in arg)
            return str(left) == str(right)
        if fn == "Fn::Not":
            return not self._eval_condition(arg[0], seen)
        if fn == "Fn::And":
            return all(self._eval_condition(a, seen) for a in arg)
        if fn == "Fn::Or":
            return any(self._eval_condition(a, seen) for a in arg)
        raise TemplateError(f"{fn} is not a condition function")

    # ------------------------------------------------------------ intrinsics

    def resolve(self, value: Any) -> Any:
        """Resolve intrinsics in a value; AWS::NoValue entries are dropped from maps/lists."""
        if isinstance(value, dict):
            if _is_intrinsic(value):
                ((fn, arg),) = value.items()
                return self._intrinsic(str(fn), arg)
            out: dict[str, Any] = {}
            for key, item in value.items():
                resolved = self.resolve(item)
                if resolved is not NO_VALUE:
                    out[key] = resolved
            return out
        if isinstance(value, list):
            return [r for r in (self.resolve(v) for v in value) if r is not NO_VALUE]
        return value

    def _intrinsic(self, fn: str, arg: Any) -> Any:
        if fn == "Ref":
            return self.ref(str(arg))
        if fn == "Condition":
            return self.condition(str(arg))
        if fn == "Fn::GetAtt":
            if isinstance(arg, str):
                resource, _, attribute = arg.partition(".")
            else:
                resource, attribute = (str(a) for a in self.resolve(arg))
            return self.get_att(resource, attribute)
        if fn == "Fn::Sub":
            return self._sub(arg)
        if fn == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(str(name)) else when_false)
        if fn in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or"):
            return self._eval_condition({fn: arg}, frozenset())
        if fn == "Fn::Join":
            sep, items = arg
            parts = self.resolve(items)
            return str(self.resolve(sep)).join(str(p) for p in parts)
        if fn == "Fn::Select":
            index, items = arg
            values = self.resolve(items)
            return values[int(self.resolve(index))]
        if fn == "Fn::Split":
            sep, source = arg
            return str(self.resolve(source)).split(str(self.resolve(sep)))
        if fn == "Fn::FindInMap":
            mapping, top, second = (self.resolve(a) for a in arg)
            try:
                return self.raw["Mappings"][mapping][top][second]
            except KeyError as exc:
                raise TemplateError(f"Fn::FindInMap {mapping}/{top}/{second}: no such key") from exc
        if fn == "Fn::Base64":
            import base64

            return base64.b64encode(str(self.resolve(arg)).encode()).decode()
        if fn == "Fn::GetAZs":
            return [f"{REGION}a", f"{REGION}b", f"{REGION}c"]
        raise TemplateError(f"intrinsic {fn} is not supported locally")

    _SUB_PATTERN = re.compile(r"\$\{([^}]*)\}")

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, variables = arg[0], {k: self.resolve(v) for k, v in (arg[1] or {}).items()}
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if name in PSEUDO_PARAMETERS or name in self.parameters or name in self.resources:
                return str(self.ref(name))
            if "." in name:
                resource, _, attribute = name.partition(".")
                return str(self.get_att(resource, attribute))
            return str(self.ref(name))

        return self._SUB_PATTERN.sub(replace, str(text))

    # ------------------------------------------------------------ references

    def set_physical(self, logical_id: str, **attributes: Any) -> None:
        """Record ids known only after creation (e.g. ``Ref`` = a secret's ARN)."""
        self._physical.setdefault(logical_id, {}).update(attributes)

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        if name in self.parameters:
            return self.parameters[name]
        published = self._published(name)
        if published is not None:
            return published
        physical = self._physical.get(name, {})
        if "Ref" in physical:
            return physical["Ref"]
        resource = self._resource(name)
        kind = resource.type
        if kind == TABLE_TYPE:
            return self.table_name(name)
        if kind == QUEUE_TYPE:
            return self.queue_url(name)
        if kind == PARAMETER_TYPE:
            return self.parameter_name(name)
        if kind == HTTP_API_TYPE:
            return HTTP_API_ID
        if kind == FUNCTION_TYPE:
            return name
        if kind == EVENT_BUS_TYPE:
            return self.event_bus_name(name)
        if kind == TOPIC_TYPE:
            return self.topic_arn(name)
        if kind == RULE_TYPE:
            return self.rule_name(name)
        if kind in LAYER_TYPES:
            layer_name = self.resolve(resource.properties.get("LayerName", name))
            return f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT_ID}:layer:{layer_name}:1"
        if kind == SECRET_TYPE:
            raise TemplateError(f"!Ref {name}: the secret's ARN is known only once provisioned")
        raise TemplateError(f"!Ref {name}: resource type {kind} is not emulated locally")

    def get_att(self, name: str, attribute: str) -> Any:
        physical = self._physical.get(name, {})
        if attribute in physical:
            return physical[attribute]
        resource = self._resource(name)
        kind = resource.type
        if kind == TABLE_TYPE and attribute == "Arn":
            return f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT_ID}:table/{self.table_name(name)}"
        if kind == TABLE_TYPE and attribute == "StreamArn":
            if not resource.properties.get("StreamSpecification"):
                raise TemplateError(
                    f"!GetAtt {name}.StreamArn: {name} has no StreamSpecification, so it has no "
                    f"stream (CloudFormation: Attribute: StreamArn was not found for resource: "
                    f"{name})"
                )
            raise TemplateError(f"!GetAtt {name}.StreamArn: the stream exists once provisioned")
        if kind == EVENT_BUS_TYPE:
            if attribute == "Arn":
                return self.event_bus_arn(self.event_bus_name(name))
            if attribute == "Name":
                return self.event_bus_name(name)
        if kind == TOPIC_TYPE:
            if attribute == "TopicArn":
                return self.topic_arn(name)
            if attribute == "TopicName":
                return self.topic_name(name)
        if kind == RULE_TYPE and attribute == "Arn":
            return self.rule_arn(name)
        if kind == QUEUE_TYPE:
            if attribute == "Arn":
                return self.queue_arn(name)
            if attribute == "QueueName":
                return self.queue_name(name)
            if attribute == "QueueUrl":
                return self.queue_url(name)
        if kind == FUNCTION_TYPE and attribute == "Arn":
            return f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"
        if kind == PARAMETER_TYPE and attribute in ("Type", "Value"):
            return self.resolve(resource.properties.get(attribute))
        raise TemplateError(f"!GetAtt {name}.{attribute}: not emulated locally for {kind}")

    def _published(self, name: str) -> str | None:
        """`Ref` of what SAM makes of a function's AutoPublishAlias: `<Fn>.Alias` and the
        generated `<Fn>Alias<alias>` (the alias ARN), `<Fn>.Version` (the version ARN; locally
        there is one published version, the code as it runs). None for any other name."""
        function_id, _, suffix = name.rpartition(".")
        if suffix not in ("Alias", "Version") or function_id not in self.resources:
            function_id, suffix = "", ""
            for fn in self.function_ids():
                alias = self.resources[fn].properties.get("AutoPublishAlias")
                if alias and name == f"{fn}Alias{self.resolve(alias)}":
                    function_id, suffix = fn, "Alias"
            if not function_id:
                return None
        resource = self.resources[function_id]
        alias = self.function_properties(function_id).get("AutoPublishAlias")
        if resource.type != FUNCTION_TYPE or not alias:
            raise TemplateError(
                f"!Ref {name}: {function_id} has no AutoPublishAlias, so no alias or version"
            )
        arn = f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT_ID}:function:{function_id}"
        return f"{arn}:{self.resolve(alias)}" if suffix == "Alias" else f"{arn}:1"

    def _resource(self, name: str) -> Resource:
        if name in self.resources:
            return self.resources[name]
        if name in self.skipped:
            raise TemplateError(
                f"reference to {name}, which is off locally (condition {self.skipped[name]})"
            )
        raise TemplateError(f"reference to unknown parameter or resource {name!r}")

    # ------------------------------------------------------------ physical names

    def table_name(self, logical_id: str) -> str:
        props = self._resource(logical_id).properties
        if "TableName" in props:
            return str(self.resolve(props["TableName"]))
        return f"{STACK_NAME}-{logical_id}"

    def queue_name(self, logical_id: str) -> str:
        props = self._resource(logical_id).properties
        fifo = str(self.resolve(props.get("FifoQueue", False))).lower() == "true"
        if "QueueName" in props:
            name = str(self.resolve(props["QueueName"]))
            if fifo and not name.endswith(".fifo"):
                raise TemplateError(f"{logical_id}: a FIFO queue's name must end in .fifo")
            return name
        return f"{STACK_NAME}-{logical_id}" + (".fifo" if fifo else "")

    def queue_arn(self, logical_id: str) -> str:
        return f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT_ID}:{self.queue_name(logical_id)}"

    def queue_url(self, logical_id: str) -> str:
        if self.aws_endpoint is None:
            raise TemplateError(f"!Ref {logical_id}: queue URLs need the embedded AWS endpoint")
        return f"{self.aws_endpoint}/{ACCOUNT_ID}/{self.queue_name(logical_id)}"

    def queue_by_arn(self, arn: str) -> str:
        for resource in self.of_type(QUEUE_TYPE):
            if self.queue_arn(resource.logical_id) == arn:
                return resource.logical_id
        raise TemplateError(f"no queue in the template has the ARN {arn}")

    def event_bus_name(self, logical_id: str) -> str:
        props = self._resource(logical_id).properties
        if "Name" not in props:
            raise TemplateError(f"{logical_id}: an AWS::Events::EventBus needs a Name")
        return str(self.resolve(props["Name"]))

    @staticmethod
    def event_bus_arn(name: str) -> str:
        if name.startswith("arn:"):
            return name
        return f"arn:{PARTITION}:events:{REGION}:{ACCOUNT_ID}:event-bus/{name}"

    def topic_name(self, logical_id: str) -> str:
        props = self._resource(logical_id).properties
        fifo = str(self.resolve(props.get("FifoTopic", False))).lower() == "true"
        if "TopicName" in props:
            return str(self.resolve(props["TopicName"]))
        return f"{STACK_NAME}-{logical_id}" + (".fifo" if fifo else "")

    def topic_arn(self, logical_id: str) -> str:
        return f"arn:{PARTITION}:sns:{REGION}:{ACCOUNT_ID}:{self.topic_name(logical_id)}"

    def rule_name(self, logical_id: str) -> str:
        props = self._resource(logical_id).properties
        if "Name" in props:
            return str(self.resolve(props["Name"]))
        return f"{STACK_NAME}-{logical_id}"

    def rule_arn(self, logical_id: str) -> str:
        props = self._resource(logical_id).properties
        bus = str(self.resolve(props.get("EventBusName", "default"))).rsplit("/", 1)[-1]
        prefix = "" if bus == "default" else f"{bus}/"
        name = self.rule_name(logical_id)
        return f"arn:{PARTITION}:events:{REGION}:{ACCOUNT_ID}:rule/{prefix}{name}"

    def parameter_name(self, logical_id: str) -> str:
        props = self._resource(logical_id).properties
        if "Name" in props:
            return str(self.resolve(props["Name"]))
        return f"{STACK_NAME}-{logical_id}"

    def secret_name(self, logical_id: str) -> str:
        props = self._resource(logical_id).properties
        if "Name" in props:
            return str(self.resolve(props["Name"]))
        return f"{STACK_NAME}-{logical_id}"

    # ------------------------------------------------------------ views

    def of_type(self, *types: str) -> list[Resource]:
        return [r for r in self.resources.values() if r.type in types]

    def dependencies(self, logical_id: str) -> set[str]:
        """Resources this resource's properties refer to (for creation order)."""
        found: set[str] = set()

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    if key == "Ref" and isinstance(item, str):
                        found.add(item)
                    elif key == "Fn::GetAtt":
                        target = item.partition(".")[0] if isinstance(item, str) else item[0]
                        found.add(str(target))
                    elif key == "Fn::Sub":
                        text = item[0] if isinstance(item, list) else item
                        for match in self._SUB_PATTERN.finditer(str(text)):
                            found.add(match.group(1).split(".")[0])
                        if isinstance(item, list):
                            walk(item[1:])
                    else:
                        walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

        walk(self._resource(logical_id).properties)
        return {d for d in found if d in self.resources and d != logical_id}

    def creation_order(self, types: tuple[str, ...]) -> list[Resource]:
        """Resources of the given types, each after those it refers to (DLQs before queues)."""
        wanted = {r.logical_id for r in self.of_type(*types)}
        ordered: list[Resource] = []
        done: set[str] = set()

        def visit(logical_id: str, stack: tuple[str, ...]) -> None:
            if logical_id in done:
                return
            if logical_id in stack:
                raise TemplateError(f"circular reference: {' -> '.join((*stack, logical_id))}")
            for dep in sorted(self.dependencies(logical_id) & wanted):
                visit(dep, (*stack, logical_id))
            done.add(logical_id)
            ordered.append(self.resources[logical_id])

        for logical_id in self.resources:
            if logical_id in wanted:
                visit(logical_id, ())
        return ordered

    def function_ids(self) -> list[str]:
        return [r.logical_id for r in self.of_type(FUNCTION_TYPE)]

    def function_properties(self, logical_id: str) -> dict[str, Any]:
        """The function's raw properties with Globals.Function merged in (not yet resolved)."""
        resource = self._resource(logical_id)
        merged: dict[str, Any] = {}
        for key in set(self.function_globals) | set(resource.properties):
            if key in self.function_globals and key in resource.properties:
                merged[key] = sam_merge(self.function_globals[key], resource.properties[key])
            elif key in resource.properties:
                merged[key] = resource.properties[key]
            else:
                merged[key] = self.function_globals[key]
        return merged

    def function(self, logical_id: str) -> FunctionSpec:
        props = self.function_properties(logical_id)
        code_uri = self.resolve(props.get("CodeUri"))
        if not isinstance(code_uri, str):
            raise TemplateError(f"{logical_id}: only a local CodeUri path is supported")
        handler = str(self.resolve(props.get("Handler", "")))
        if "." not in handler:
            raise TemplateError(f"{logical_id}: Handler must look like module.function")
        variables = (self.resolve(props.get("Environment") or {}) or {}).get("Variables") or {}
        environment = {str(k): _to_env_string(v) for k, v in variables.items()}
        reserved = props.get("ReservedConcurrentExecutions")
        events = tuple(
            FunctionEvent(
                name=name,
                type=str(body.get("Type")),
                # Event types that are not emulated may refer to resources that are not
                # either (SNS topics, ...); they are kept unresolved and ignored.
                properties=self.resolve(body.get("Properties") or {})
                if str(body.get("Type")) in EMULATED_EVENT_TYPES
                else {},
                raw_properties=dict(body.get("Properties") or {}),
            )
            for name, body in (props.get("Events") or {}).items()
        )
        return FunctionSpec(
            logical_id=logical_id,
            code_dir=(self.dir / code_uri).resolve(),
            handler=handler,
            runtime=str(self.resolve(props.get("Runtime", "python3.12"))),
            timeout=int(self.resolve(props.get("Timeout", 3))),
            memory_size=int(self.resolve(props.get("MemorySize", 128))),
            environment=environment,
            layer_dirs=tuple(self._layer_dirs(logical_id, props.get("Layers") or [])),
            reserved_concurrency=None if reserved is None else int(self.resolve(reserved)),
            events=events,
        )

    def _layer_dirs(self, function_id: str, layers: list[Any]) -> Iterator[Path]:
        for layer in layers:
            target = layer.get("Ref") if isinstance(layer, dict) else None
            resource = self.resources.get(str(target)) if target else None
            if resource is None or resource.type not in LAYER_TYPES:
                raise TemplateError(
                    f"{function_id}: layer {layer!r} is not a layer of this template; "
                    "only local layers (!Ref to a LayerVersion) can be emulated"
                )
            props = resource.properties
            content = self.resolve(props.get("ContentUri", props.get("Content")))
            if not isinstance(content, str):
                raise TemplateError(f"{resource.logical_id}: only a local ContentUri is supported")
            yield (self.dir / content).resolve()

    def outputs(self) -> dict[str, Any]:
        """Outputs that resolve locally (others are left out)."""
        result: dict[str, Any] = {}
        for name, body in (self.raw.get("Outputs") or {}).items():
            condition = body.get("Condition")
            if condition is not None and not self.condition(str(condition)):
                continue
            try:
                result[name] = self.resolve(body.get("Value"))
            except TemplateError:
                continue
        return result

    def resolve_path(self, relative: str) -> Path:
        """A path from Metadata.Local, relative to the project root."""
        return (self.root / relative).resolve()
