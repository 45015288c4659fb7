"""Schemathesis hooks for lockd's CI run (see .ci/run and .ci/schemathesis.toml).

They adjust generated requests, never checks or responses, and each for one reason the
schema itself cannot carry:

- Byte limits. lockd limits resource ids, list prefixes and agent ids in bytes of UTF-8
  (512, 512, 128), as the wire contract says. JSON Schema's `maxLength` counts
  characters, so a schema-valid string of non-ASCII characters can be too long in bytes,
  and lockd rightly refuses it. Such a string is cut to the byte limit, keeping it valid.
- List cursors. A cursor is opaque: the hex of a resource id that lockd handed out, so
  always valid UTF-8. The schema gives its shape (pairs of hex digits); hex of bytes that
  are not UTF-8 is not a cursor lockd could have returned. Such a cursor is replaced by
  the hex of its decodable part.
- Waiting. `wait_ms` may be up to 60 s, and a waiting acquire on a held lock really
  waits. To keep the run to a couple of minutes, waits above 1 s are shortened to 1 s;
  values above the maximum (negative tests) are left alone, so their 422 is still checked.
- Release without a token. `DELETE /locks/{id}` needs `Lock-Token` unless `force=true`,
  a rule between two parameters that OpenAPI cannot state, so the header is optional in
  the document. A valid request without either gets a well-formed token that holds
  nothing (404 `lock_not_found`), as any real client's would.
- An empty list of event types. `types=` is how a form-style query writes an empty list
  (no filter, 200) and also how it writes the list `[""]`, which schemathesis generates
  as invalid. That one is sent as an unknown type instead, which keeps it invalid.

And one failure filter, for a flaw in schemathesis 4.32.5 itself: its coverage phase
labels some requests schema-valid although it generated one of their parts as invalid
(a `Lock-Token` of `0`, say). A "schema-valid request rejected" failure is dropped only
when schemathesis's own record of the request says a part of it was generated invalid.
"""

import uuid


import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.modes import GenerationMode

# (location, name) -> lockd's limit in bytes of UTF-8
BYTE_LIMITS = {
    ("path_parameters", "resource_id"): 512,
    ("query", "prefix"): 512,
    ("body", "agent_id"): 128,
}
MAX_WAIT_MS = 60_000
WAIT_CAP_MS = 1_000


def _cut_to_bytes(value, limit):
    """The longest prefix of `value` with at most `limit` bytes of UTF-8."""
    return value.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _fits_in_chars_not_bytes(value, limit):
    return isinstance(value, str) and len(value) <= limit < len(value.encode("utf-8"))


@schemathesis.hook
def before_call(context, case, **kwargs):
    for (location, name), limit in BYTE_LIMITS.items():
        container = getattr(case, location, None)
        if isinstance(container, dict) and _fits_in_chars_not_bytes(container.get(name), limit):
            container[name] = _cut_to_bytes(container[name], limit)

    query = case.query if isinstance(case.query, dict) else {}
    cursor = query.get("cursor")
    if isinstance(cursor, str) and cursor and len(cursor) % 2 == 0:
        try:
            raw = bytes.fromhex(cursor)
        except ValueError:
            raw = None  # not hex: a negative test, left alone
        if raw is not None:
            query["cursor"] = raw.decode("utf-8", "ignore").encode("utf-8").hex()

    body = case.body if isinstance(case.body, dict) else {}
    wait_ms = body.get("wait_ms")
    # lockd reads 1500 and 1500.0 alike (JSON Schema's integers); keep the spelling.
    if type(wait_ms) in (int, float) and WAIT_CAP_MS < wait_ms <= MAX_WAIT_MS:
        body["wait_ms"] = type(wait_ms)(WAIT_CAP_MS)

    if case.method.upper() == "DELETE" and _is_positive(case):
        headers = case.headers if isinstance(case.headers, dict) else None
        if query.get("force") is not True and (headers is None or "Lock-Token" not in headers):
            if headers is None:
                case.headers = headers = {}
            headers["Lock-Token"] = str(uuid.uuid4())

    # Already joined with commas by the time it gets here.
    if query.get("types") in ("", [""]) and _is_negative_query(case):
        query["types"] = "resource.nothing"


def _is_negative_query(case):
    return _is_negative(case, ParameterLocation.QUERY)


def _is_negative(case, location):
    component = case.meta.components.get(location) if case.meta else None
    return component is not None and component.mode.is_negative


def _is_positive(case):
    meta = case.meta
    return meta is not None and meta.generation.mode == GenerationMode.POSITIVE


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure except the mislabelled one described above."""
    if failure.code != "ST202" or case.meta is None:
        return True
    return not any(component.mode.is_negative for component in case.meta.components.values())
