"""HTTP API routes, authorizers and CORS, read from the template's HttpApi events."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from local.auth import JwtAuthorizerConfig
from local.template import FUNCTION_TYPE, HTTP_API_TYPE, Template, TemplateError, sam_merge

IMPLICIT_API = "ServerlessHttpApi"


@dataclass(frozen=True)
class CorsConfig:
    allow_origins: tuple[str, ...]
    allow_headers: tuple[str, ...]
    allow_methods: tuple[str, ...]
    expose_headers: tuple[str, ...]
    allow_credentials: bool
    max_age: int | None

    def origin_allowed(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin value for this origin, if it is allowed."""
        if "*" in self.allow_origins:
            return "*"
        return origin if origin in self.allow_origins else None


@dataclass(frozen=True)
class Route:
    api: str
    method: str  # upper case, or ANY
    path: str  # "/topups/{order_id}", or "$default"
    function: str
    event_name: str
    authorizer: JwtAuthorizerConfig | None
    scopes: tuple[str, ...]
    pattern: re.Pattern[str] = field(compare=False)
    names: tuple[str, ...] = field(compare=False)

    @property
    def route_key(self) -> str:
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"

    def priority(self) -> tuple[int, int, int, int, int]:
        # API Gateway picks the most specific route: literal paths over variables, variables
        # over greedy ones, a given method over ANY, and $default last.
        if self.path == "$default":
            return (1, 0, 0, 0, 0)
        greedy = 1 if "+}" in self.path else 0
        literal = len(re.sub(r"\{[^}]+\}", "", self.path))
        return (0, greedy, len(self.names), -literal, 1 if self.method == "ANY" else 0)

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("ANY", method):
            return None
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return dict(zip(self.names, found.groups(), strict=True))


def compile_path(path: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    if path == "$default":
        return re.compile(r".*"), ()
    names: list[str] = []
    parts: list[str] = []
    for segment in re.split(r"(\{[^}]+\})", path):
        variable = re.fullmatch(r"\{([^}+]+)(\+?)\}", segment)
        if variable:
            names.append(variable.group(1))
            parts.append("(.+)" if variable.group(2) else "([^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("".join(parts)), tuple(names)


@dataclass
class HttpApi:
    logical_id: str
    authorizers: dict[str, JwtAuthorizerConfig]
    default_authorizer: str | None
    cors: CorsConfig | None


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return (str(value),)


def read_apis(template: Template) -> dict[str, HttpApi]:
    apis: dict[str, HttpApi] = {}
    http_globals = (template.raw.get("Globals") or {}).get("HttpApi") or {}
    for resource in template.of_type(HTTP_API_TYPE):
        props = (
            sam_merge(http_globals, resource.properties) if http_globals else resource.properties
        )
        apis[resource.logical_id] = _read_api(template, resource.logical_id, props)
    if IMPLICIT_API not in apis:
        apis[IMPLICIT_API] = _read_api(template, IMPLICIT_API, http_globals)
    return apis


def _read_api(template: Template, logical_id: str, props: dict[str, Any]) -> HttpApi:
    auth = template.resolve(props.get("Auth") or {})
    authorizers: dict[str, JwtAuthorizerConfig] = {}
    for name, spec in (auth.get("Authorizers") or {}).items():
        jwt_config = spec.get("JwtConfiguration")
        if not jwt_config:
            raise TemplateError(
                f"{logical_id}: authorizer {name} is not a JWT authorizer; "
                "only JWT authorizers are emulated"
            )
        source = str(spec.get("IdentitySource", "$request.header.Authorization"))
        prefix = "$request.header."
        if not source.startswith(prefix):
            raise TemplateError(
                f"{logical_id}: authorizer {name}: identity source {source} "
                "is not emulated (only request headers are)"
            )
        authorizers[name] = JwtAuthorizerConfig(
            name=name,
            identity_header=source[len(prefix) :].lower(),
            issuer=str(jwt_config.get("issuer", "")),
            audiences=_strings(jwt_config.get("audience")),
        )
    default = auth.get("DefaultAuthorizer")
    if default is not None and default not in authorizers:
        raise TemplateError(f"{logical_id}: DefaultAuthorizer {default} is not defined")
    cors_raw = template.resolve(props.get("CorsConfiguration"))
    cors: CorsConfig | None = None
    if cors_raw is True or (isinstance(cors_raw, str) and cors_raw.lower() == "true"):
        cors = CorsConfig(("*",), ("*",), ("*",), (), False, None)
    elif isinstance(cors_raw, dict):
        cors = CorsConfig(
            allow_origins=_strings(cors_raw.get("AllowOrigins")),
            allow_headers=tuple(h.lower() for h in _strings(cors_raw.get("AllowHeaders"))),
            allow_methods=tuple(m.upper() for m in _strings(cors_raw.get("AllowMethods"))),
            expose_headers=_strings(cors_raw.get("ExposeHeaders")),
            allow_credentials=str(cors_raw.get("AllowCredentials", False)).lower() == "true",
            max_age=None if cors_raw.get("MaxAge") is None else int(cors_raw["MaxAge"]),
        )
    return HttpApi(logical_id, authorizers, default, cors)


def read_routes(template: Template, apis: dict[str, HttpApi]) -> list[Route]:
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    for resource in template.of_type(FUNCTION_TYPE):
        events = template.function_properties(resource.logical_id).get("Events") or {}
        for event_name, body in events.items():
            if body.get("Type") != "HttpApi":
                continue
            raw = body.get("Properties") or {}
            api_ref = raw.get("ApiId")
            api_id = IMPLICIT_API
            if isinstance(api_ref, dict) and "Ref" in api_ref:
                api_id = str(api_ref["Ref"])
            elif api_ref is not None:
                raise TemplateError(f"{resource.logical_id}.{event_name}: ApiId must be a !Ref")
            if api_id not in apis:
                raise TemplateError(f"{resource.logical_id}.{event_name}: unknown API {api_id}")
            api = apis[api_id]
            props = template.resolve(raw)
            if str(props.get("PayloadFormatVersion", "2.0")) != "2.0":
                raise TemplateError(
                    f"{resource.logical_id}.{event_name}: only payload format 2.0 is emulated"
                )
            method = str(props.get("Method", "ANY")).upper()
            path = str(props.get("Path", "$default"))
            if method in ("X-AMAZON-APIGATEWAY-ANY-METHOD", "*"):
                method = "ANY"
            auth = props.get("Auth") or {}
            authorizer_name = auth.get("Authorizer", api.default_authorizer)
            authorizer = None
            if authorizer_name not in (None, "NONE"):
                if authorizer_name not in api.authorizers:
                    raise TemplateError(
                        f"{resource.logical_id}.{event_name}: unknown authorizer {authorizer_name}"
                    )
                authorizer = api.authorizers[authorizer_name]
            key = (method, path)
            if key in seen:
                raise TemplateError(
                    f"route {method} {path} is defined twice "
                    f"({seen[key]} and {resource.logical_id}.{event_name})"
                )
            seen[key] = f"{resource.logical_id}.{event_name}"
            pattern, names = compile_path(path)
            routes.append(
                Route(
                    api=api_id,
                    method=method,
                    path=path,
                    function=resource.logical_id,
                    event_name=event_name,
                    authorizer=authorizer,
                    scopes=_strings(auth.get("AuthorizationScopes")),
                    pattern=pattern,
                    names=names,
                )
            )
    routes.sort(key=Route.priority)
    return routes


def find_route(routes: list[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for route in routes:
        params = route.match(method, path)
        if params is not None:
            return route, params
    return None
