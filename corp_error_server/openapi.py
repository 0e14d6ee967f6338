"""The OpenAPI 3 description served at /openapi.json. The length limits come from limits.py, as the
application's validation does."""

from __future__ import annotations

from typing import Any, Dict

from . import limits
from .storage import GROUP_SORTS, GROUP_STATUSES


def _s(max_length=None, **extra) -> dict:
    schema: Dict[str, Any] = {"type": "string"}
    if max_length is not None:
        schema["maxLength"] = max_length
    schema.update(extra)
    return schema


def _limited(name: str, schema: dict) -> dict:
    """``schema`` with the limits of its fields: maxLength, and what is kept of a longer value. An
    optional string may be null: the application reads null as absent."""
    properties = schema["properties"]
    for field, prop in properties.items():
        if field not in schema.get("required", ()) and prop.get("type") == "string":
            prop["nullable"] = True
    for field, length in limits.MAX_LENGTH.get(name, {}).items():
        properties[field]["maxLength"] = length
    for field, length in limits.KEPT.get(name, {}).items():
        kept = "the %s %s characters are kept" % (
            "last" if field in limits.KEPT_AT_END else "first",
            format(length, ","),
        )
        described = properties[field].get("description")
        properties[field]["description"] = described + "; " + kept if described else kept
    return schema


_ERROR = {"type": "object", "required": ["error"], "properties": {"error": _s()}}
_TS = {
    "oneOf": [{"type": "number"}, _s(limits.TS_TEXT, format="date-time")],
    "description": "epoch seconds or ISO-8601",
}

_BEACON = _limited(
    "Beacon",
    {
        "type": "object",
        "required": ["kind", "env_hash", "script_id", "ts"],
        "description": "An error needs error_sig or trace. Unknown fields are ignored.",
        "properties": {
            "kind": {"type": "string", "enum": list(limits.KINDS)},
            "env_hash": _s(minLength=1),
            "script_id": _s(minLength=1),
            "ts": _TS,
            "trace": _s(description="traceback"),
            "error_sig": _s(description="signature; grouped by its normalised exception line"),
            "event_id": _s(minLength=1, description="stored once however often it is sent"),
            "script_name": _s(),
            "agent": _s(),
            "test": {"type": "boolean"},
            "handled": {
                "type": "boolean",
                "nullable": True,
                "description": "a logged or captured error rather than an uncaught one",
            },
            "host": _s(description="the machine's host name (ERROR_AGENT_SEND_HOST=0 leaves it out)"),
            "prev_env_hash": _s(minLength=1, description="success beacons: the env of the failure it follows"),
            "prev_error_sig": _s(description="success beacons: the failure it follows"),
            "env": {"$ref": "#/components/schemas/Env"},
        },
    },
)
_ENV = _limited(
    "Env",
    {
        "type": "object",
        "required": ["env_hash", "packages", "python_ver", "os_info", "machine_arch"],
        "properties": {
            "env_hash": _s(minLength=1),
            "packages": {
                "oneOf": [
                    {
                        "type": "array",
                        "maxItems": limits.PACKAGES,
                        "items": _s(limits.PACKAGE_ITEM, description="name==version"),
                    },
                    {
                        "type": "object",
                        "maxProperties": limits.PACKAGES,
                        "additionalProperties": _s(limits.PACKAGE_VERSION, nullable=True),
                        "description": "{name: version or null}; a name has at most %d characters"
                        % limits.PACKAGE_NAME,
                    },
                ]
            },
            "python_ver": _s(),
            "python_impl": _s(),
            "os_info": _s(),
            "machine_arch": _s(),
            "env_vars": {
                "type": "object",
                "nullable": True,
                "maxProperties": limits.ENV_VARS,
                "additionalProperties": _s(limits.ENV_VAR_VALUE, nullable=True, description="value or MISSING"),
                "description": "{NAME: value}; a name has 1 to %d characters; null is MISSING" % limits.ENV_VAR_NAME,
            },
        },
    },
)
_SUGGEST = _limited(
    "SuggestRequest",
    {
        "type": "object",
        "required": ["error_sig", "env_hash"],
        "properties": {"error_sig": _s(minLength=1), "env_hash": _s(), "script_id": _s()},
    },
)
_SUGGESTION = {
    "type": "object",
    "required": ["match"],
    "properties": {
        "match": {"type": "boolean"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "hint": _s(description="one line with the evidence"),
        "solution": _s(description="the command"),
        "recommendation": _s(description="== hint, for the 0.4.2 client"),
        "docs": _s(),
        "evidence": {"type": "object"},
        "reason": _s(description="why the engine abstained"),
    },
}
_GROUP = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "group_key": _s(),
        "signature": _s(),
        "count": {"type": "integer"},
        "handled": {"type": "integer", "description": "how many of count were logged or captured, not uncaught"},
        "scripts": {"type": "integer"},
        "envs_affected": {"type": "integer"},
        "first_seen": {"type": "number"},
        "last_seen": {"type": "number"},
        "first_seen_iso": _s(description="UTC, ISO-8601"),
        "last_seen_iso": _s(description="UTC, ISO-8601"),
        "status": {"type": "string", "enum": ["new", "regressed", "resolved", "ignored"]},
        "script_names": {"type": "array", "items": _s()},
        "failing_runs": {"type": "integer"},
        "succeeding_runs": {"type": "integer"},
        "suggestion": {"$ref": "#/components/schemas/Suggestion"},
        "recent": {"type": "array", "items": {"type": "object"}},
        "comparison": {"type": "array", "items": {"type": "object"}},
        "observed_fixes": {"type": "array", "items": {"type": "object"}},
        "mentions": {"type": "array", "items": _s()},
    },
}


def _json(schema_ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/" + schema_ref}}}


def _errors(*codes: int) -> dict:
    return {str(code): {"description": "error", "content": _json("Error")} for code in codes}


def _post(summary: str, body: str, responses: dict) -> dict:
    responses.update(_errors(400, 401, 413, 415))
    return {
        "post": {"summary": summary, "requestBody": {"required": True, "content": _json(body)}, "responses": responses}
    }


def spec(max_body: int) -> dict:
    ok = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "corp-error-server",
            "version": "1",
            "description": "Error beacons in, the command that fixes them out. Bodies over %d bytes get 413; "
            "with a token, every route but /healthz needs `Authorization: Bearer`." % max_body,
        },
        "components": {
            "schemas": {
                "Beacon": _BEACON,
                "Env": _ENV,
                "SuggestRequest": _SUGGEST,
                "Suggestion": _SUGGESTION,
                "Group": _GROUP,
                "Error": _ERROR,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/beacon": _post(
                "Report an error or a success",
                "Beacon",
                {
                    "200": {"description": "stored", "content": {"application/json": {"schema": ok}}},
                    "204": {"description": "stored; env unknown, POST /env next"},
                },
            ),
            "/env": _post(
                "Register an environment snapshot",
                "Env",
                {
                    "200": {"description": "already known", "content": {"application/json": {"schema": ok}}},
                    "201": {"description": "stored", "content": {"application/json": {"schema": ok}}},
                },
            ),
            "/suggest": _post(
                "Ask for the fix of an error in an environment",
                "SuggestRequest",
                {"200": {"description": "suggestion or match false", "content": _json("Suggestion")}},
            ),
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": ok}}}},
                }
            },
            "/api/errors": {
                "get": {
                    "summary": "Error groups, most recent first; filtered and sorted as the dashboard's list",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {
                            "name": "q",
                            "in": "query",
                            "description": "text in the signature",
                            "schema": {"type": "string", "maxLength": limits.QUERY["q"]},
                        },
                        {
                            "name": "status",
                            "in": "query",
                            "allowEmptyValue": True,
                            "description": "empty: any",
                            "schema": {"type": "string", "enum": list(GROUP_STATUSES)},
                        },
                        {
                            "name": "script",
                            "in": "query",
                            "description": "script id",
                            "schema": {"type": "string", "maxLength": limits.QUERY["script"]},
                        },
                        {
                            "name": "package",
                            "in": "query",
                            "description": "name==version some failing run had",
                            "schema": {"type": "string", "maxLength": limits.QUERY["package"]},
                        },
                        {
                            "name": "python",
                            "in": "query",
                            "description": "3.11 or 3.11.7, of some failing run",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "sort",
                            "in": "query",
                            "allowEmptyValue": True,
                            "description": "empty: last_seen",
                            "schema": {"type": "string", "enum": list(GROUP_SORTS)},
                        },
                    ],
                    "responses": dict(
                        {
                            "200": {
                                "description": "groups",
                                "content": {
                                    "application/json": {
                                        "schema": {
                                            "type": "object",
                                            "properties": {
                                                "groups": {
                                                    "type": "array",
                                                    "items": {"$ref": "#/components/schemas/Group"},
                                                },
                                                "total": {"type": "integer"},
                                                "limit": {"type": "integer"},
                                                "offset": {"type": "integer"},
                                            },
                                        }
                                    }
                                },
                            }
                        },
                        **_errors(400, 401),
                    ),
                }
            },
            "/api/errors/{id}": {
                "get": {
                    "summary": "One group: recent traces and the per-feature comparison",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                    "responses": dict(
                        {"200": {"description": "group", "content": _json("Group")}}, **_errors(401, 404)
                    ),
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3 document"}}}
            },
        },
    }
