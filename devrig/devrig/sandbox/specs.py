"""Request-body validation against vendors' own OpenAPI documents.

The sandbox checks what our service sends against the PSP's published schema, so a
field the real API would refuse fails in tests rather than in production. Generic on
purpose: an operation is found by HTTP method and path template, so the Klarna OM,
Adyen Checkout and Adyen classic Payment files all plug in the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

KLARNA_OM_V1 = "klarna-order-management-v1.openapi.json"
ADYEN_CHECKOUT_V71 = "adyen-CheckoutService-v71.openapi.json"
ADYEN_PAYMENT_V68 = "adyen-PaymentService-v68.openapi.json"

_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_MAX_ERRORS = 20
_DOC_URI = "urn:ordersync-sandbox:openapi"


class UnknownOperationError(LookupError):
    """The document describes no operation for this method and path."""


@dataclass(frozen=True)
class _Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    param_count: int
    validator: Validator | None


class OpenApiSpec:
    """One OpenAPI document, ready to validate request bodies."""

    def __init__(self, document: Mapping[str, Any], *, name: str = "openapi") -> None:
        # Imported here: jsonschema is a test extra, and a sandbox without it (or without
        # the vendor files) still runs, only without spec checks.
        from jsonschema import Draft4Validator, Draft202012Validator
        from referencing import Registry
        from referencing.jsonschema import DRAFT4, DRAFT202012

        self.name = name
        version = str(document.get("openapi", "3.0"))
        is_30 = version.startswith("3.0")
        # OpenAPI 3.0 schemas are draft-4-like (boolean exclusiveMinimum, $ref siblings
        # ignored) plus `nullable`; 3.1 schemas are plain JSON Schema 2020-12.
        contents: dict[str, Any] = _nullable_to_type(document) if is_30 else dict(document)
        specification = DRAFT4 if is_30 else DRAFT202012
        self._validator_cls: type[Draft4Validator] | type[Draft202012Validator] = (
            Draft4Validator if is_30 else Draft202012Validator
        )
        self._document = contents
        self._registry = Registry().with_resource(_DOC_URI, specification.create_resource(contents))
        self._base_paths = _server_base_paths(contents)
        self._operations = sorted(
            self._index_operations(), key=lambda op: (op.param_count, -len(op.template))
        )

    @classmethod
    def from_file(cls, path: Path) -> OpenApiSpec:
        with path.open(encoding="utf-8") as fh:
            return cls(json.load(fh), name=path.name)

    def _index_operations(self) -> Iterator[_Operation]:
        for template, item in self._document.get("paths", {}).items():
            for method, op in item.items():
                if method not in _HTTP_METHODS or not isinstance(op, dict):
                    continue
                pointer = self._body_schema_pointer(template, method, op)
                validator = None
                if pointer is not None:
                    root = {"$ref": f"{_DOC_URI}#{pointer}"}
                    validator = self._validator_cls(root, registry=self._registry)
                yield _Operation(
                    method=method.upper(),
                    template=template,
                    pattern=_template_regex(template),
                    param_count=template.count("{"),
                    validator=validator,
                )

    def _body_schema_pointer(self, template: str, method: str, op: dict[str, Any]) -> str | None:
        body = op.get("requestBody")
        pointer = "/".join(["", "paths", _escape(template), method, "requestBody"])
        if isinstance(body, dict) and "$ref" in body:
            ref = str(body["$ref"])
            if not ref.startswith("#/"):
                return None
            pointer = ref[1:]
            body = self._resolve_pointer(pointer)
        if not isinstance(body, dict):
            return None
        content = body.get("content", {})
        for media_type in ("application/json", *content.keys()):
            if media_type in content and "json" in media_type and "schema" in content[media_type]:
                return f"{pointer}/content/{_escape(media_type)}/schema"
        return None

    def _resolve_pointer(self, pointer: str) -> Any:
        node: Any = self._document
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def find(self, method: str, path: str) -> _Operation:
        method = method.upper()
        for candidate in self._candidate_paths(path):
            for op in self._operations:
                if op.method == method and op.pattern.fullmatch(candidate):
                    return op
        raise UnknownOperationError(f"{self.name}: no operation {method} {path}")

    def _candidate_paths(self, path: str) -> Iterator[str]:
        for base in self._base_paths:
            if base and (path == base or path.startswith(base + "/")):
                yield path[len(base) :] or "/"
        yield path

    def validate(self, method: str, path: str, body: Any) -> list[str]:
        """Schema errors for `body` as the request body of METHOD path; [] when valid.

        Raises UnknownOperationError when the document has no such operation, so a
        caller never mistakes "not checked" for "valid".
        """
        op = self.find(method, path)
        if op.validator is None:
            return []
        errors = sorted(op.validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        return [_describe(e) for e in errors[:_MAX_ERRORS]]


class SpecSet:
    """The documents the sandbox validates against, looked up by provider name."""

    def __init__(self) -> None:
        self._specs: dict[str, OpenApiSpec] = {}

    def add(self, provider: str, spec: OpenApiSpec) -> None:
        self._specs[provider] = spec

    def get(self, provider: str) -> OpenApiSpec | None:
        return self._specs.get(provider)

    def check(self, provider: str, method: str, path: str, body: Any) -> list[str] | None:
        """Errors, or None when there is nothing to check this request against."""
        spec = self._specs.get(provider)
        if spec is None:
            return None
        try:
            return spec.validate(method, path, body)
        except UnknownOperationError:
            return None


@lru_cache(maxsize=16)
def load_spec(spec_path: Path) -> OpenApiSpec:
    """Parsed and indexed once per file: the Adyen documents are close to a megabyte."""
    return OpenApiSpec.from_file(spec_path)


def validate_request(spec_path: Path | str, method: str, path: str, body: Any) -> list[str]:
    """Check a request body against a vendor OpenAPI file; [] means it conforms.

    `path` is the request path, with or without the server's base path (`/v71/...`
    and `/payments/...` both work for Adyen Checkout).
    """
    return load_spec(Path(spec_path).resolve()).validate(method, path, body)


def _describe(error: Any) -> str:
    location = _json_path(list(error.absolute_path))
    return f"{location}: {error.message}"


def _json_path(parts: list[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _template_regex(template: str) -> re.Pattern[str]:
    pieces = re.split(r"(\{[^}/]+\})", template)
    regex = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in pieces)
    return re.compile(regex)


def _server_base_paths(document: Mapping[str, Any]) -> list[str]:
    bases = []
    for server in document.get("servers", []) or []:
        base = urlparse(str(server.get("url", ""))).path.rstrip("/")
        if base:
            bases.append(base)
    return bases


def _nullable_to_type(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable_to_type(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_type(value) for key, value in node.items()}
    if out.pop("nullable", False) is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out
