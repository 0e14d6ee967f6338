"""The OpenAPI 3 description served at /openapi.json."""
from __future__ import annotations


def _s(max_length=None, **extra) -> dict:
    schema = {"type": "string"}
    if max_length is not None:
        schema["maxLength"] = max_length
    schema.update(extra)
    return schema


_ERROR = {"type": "object", "required": ["error"], "properties": {"error": _s()}}
_TS = {"oneOf": [{"type": "number"}, _s(64, format="date-time")],
       "description": "epoch seconds or ISO-8601"}

_BEACON = {
    "type": "object", "required": ["kind", "env_hash", "script_id", "ts"],
    "description": "An error needs error_sig or trace. Unknown fields are ignored.",
    "properties": {
        "kind": {"type": "string", "enum": ["error", "success"]},
        "env_hash": _s(12, minLength=1), "script_id": _s(12, minLength=1), "ts": _TS,
        "trace": _s(description="traceback; the last 25,000 characters are kept"),
        "error_sig": _s(description="signature; grouped by its normalised exception line"),
        "event_id": _s(64, minLength=1, description="stored once however often it is sent"),
        "script_name": _s(), "agent": _s(), "test": {"type": "boolean"},
        "handled": {"type": "boolean", "description": "a logged or captured error rather than an uncaught one"},
        "host": _s(description="the machine's host name (ERROR_AGENT_SEND_HOST=0 leaves it out); 255 kept"),
        "prev_env_hash": _s(12, minLength=1, description="success beacons: the env of the failure it follows"),
        "prev_error_sig": _s(description="success beacons: the failure it follows"),
        "env": {"$ref": "#/components/schemas/Env"},
    },
}
_ENV = {
    "type": "object", "required": ["env_hash", "packages", "python_ver", "os_info", "machine_arch"],
    "properties": {
        "env_hash": _s(12, minLength=1),
        "packages": {"oneOf": [{"type": "array", "items": _s(400, description="name==version")},
                               {"type": "object", "additionalProperties": _s(100)}]},
        "python_ver": _s(20), "python_impl": _s(40), "os_info": _s(120), "machine_arch": _s(20),
        "env_vars": {"type": "object", "additionalProperties": _s(4000, description="value or MISSING")},
    },
}
_SUGGEST = {
    "type": "object", "required": ["error_sig", "env_hash"],
    "properties": {"error_sig": _s(minLength=1), "env_hash": _s(12), "script_id": _s(12)},
}
_SUGGESTION = {
    "type": "object", "required": ["match"],
    "properties": {
        "match": {"type": "boolean"}, "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "hint": _s(description="one line with the evidence"), "solution": _s(description="the command"),
        "recommendation": _s(description="== hint, for the 0.4.2 client"), "docs": _s(),
        "evidence": {"type": "object"}, "reason": _s(description="why the engine abstained"),
    },
}
_GROUP = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"}, "group_key": _s(), "signature": _s(), "count": {"type": "integer"},
        "handled": {"type": "integer", "description": "how many of count were logged or captured, not uncaught"},
        "scripts": {"type": "integer"}, "envs_affected": {"type": "integer"},
        "first_seen": {"type": "number"}, "last_seen": {"type": "number"},
        "first_seen_iso": _s(description="UTC, ISO-8601"), "last_seen_iso": _s(description="UTC, ISO-8601"),
        "status": {"type": "string", "enum": ["new", "regressed", "resolved", "ignored"]},
        "script_names": {"type": "array", "items": _s()},
        "failing_runs": {"type": "integer"}, "succeeding_runs": {"type": "integer"},
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
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": _json(body)},
                     "responses": responses}}


def spec(max_body: int) -> dict:
    ok = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "corp-error-server", "version": "1",
                 "description": "Error beacons in, the command that fixes them out. Bodies over %d bytes get 413; "
                                "with a token, every route but /healthz needs `Authorization: Bearer`." % max_body},
        "components": {
            "schemas": {"Beacon": _BEACON, "Env": _ENV, "SuggestRequest": _SUGGEST, "Suggestion": _SUGGESTION,
                        "Group": _GROUP, "Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/beacon": _post("Report an error or a success", "Beacon", {
                "200": {"description": "stored", "content": {"application/json": {"schema": ok}}},
                "204": {"description": "stored; env unknown, POST /env next"}}),
            "/env": _post("Register an environment snapshot", "Env", {
                "200": {"description": "already known", "content": {"application/json": {"schema": ok}}},
                "201": {"description": "stored", "content": {"application/json": {"schema": ok}}}}),
            "/suggest": _post("Ask for the fix of an error in an environment", "SuggestRequest", {
                "200": {"description": "suggestion or match false", "content": _json("Suggestion")}}),
            "/healthz": {"get": {"summary": "Liveness", "security": [],
                                 "responses": {"200": {"description": "ok",
                                                       "content": {"application/json": {"schema": ok}}}}}},
            "/api/errors": {"get": {
                "summary": "Error groups, most recent first; filtered and sorted as the dashboard's list",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "q", "in": "query", "description": "text in the signature",
                     "schema": {"type": "string", "maxLength": 200}},
                    {"name": "status", "in": "query",
                     "schema": {"type": "string", "enum": ["new", "regressed", "resolved", "ignored"]}},
                    {"name": "script", "in": "query", "description": "script id",
                     "schema": {"type": "string", "maxLength": 12}},
                    {"name": "package", "in": "query", "description": "name==version some failing run had",
                     "schema": {"type": "string"}},
                    {"name": "python", "in": "query", "description": "3.11 or 3.11.7, of some failing run",
                     "schema": {"type": "string"}},
                    {"name": "sort", "in": "query",
                     "schema": {"type": "string", "enum": ["last_seen", "first_seen", "count"]}}],
                "responses": dict({"200": {"description": "groups", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"groups": {"type": "array", "items": {
                        "$ref": "#/components/schemas/Group"}}, "total": {"type": "integer"},
                        "limit": {"type": "integer"}, "offset": {"type": "integer"}}}}}}}, **_errors(400, 401))}},
            "/api/errors/{id}": {"get": {
                "summary": "One group: recent traces and the per-feature comparison",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": dict({"200": {"description": "group", "content": _json("Group")}},
                                  **_errors(401, 404))}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3 document"}}}},
        },
    }
