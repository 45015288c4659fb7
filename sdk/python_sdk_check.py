"""Proves that a client generated from openapi/openapi.json works against a live lockd.

CI (.ci/run) generates `lockd_client` with openapi-python-client from the committed spec,
installs it, and runs this script with lockd's base URL:

    python sdk/python_sdk_check.py http://127.0.0.1:8080

It drives one lock's whole life through the generated functions only, and asserts on
the typed results they return: models with typed fields for successes, and a `Problem`
with its stable `code` for errors. The resource id holds slashes, which the client must
percent-encode into the path. It exits non-zero at the first failed check.
"""

import datetime
import sys
import uuid

from lockd_client import Client
from lockd_client.api.locks import (
    acquire_lock,
    get_lock,
    list_locks,
    refresh_lock,
    release_lock,
)
from lockd_client.models import (
    AcquireRequest,
    LockGrant,
    LockList,
    LockStatus,
    Problem,
    RefreshRequest,
)
from lockd_client.types import UNSET

passed = 0


def check(name, condition, detail=""):
    global passed
    if not condition:
        print(f"FAILED: {name} {detail}")
        print(f"sdk: {passed} passed, 1 failed")
        sys.exit(1)
    passed += 1
    print(f"ok: {name}")


def main(base_url):
    client = Client(base_url=base_url, raise_on_unexpected_status=True)
    resource = f"sdk-check/{uuid.uuid4()}/src/main.py"

    # Acquire: a typed grant, with the token in the body and the Lock-Token header.
    response = acquire_lock.sync_detailed(
        resource, client=client, body=AcquireRequest(agent_id="sdk-agent-a", ttl_ms=30_000)
    )
    grant = response.parsed
    check("acquire returns 201 and a LockGrant", response.status_code == 201 and isinstance(grant, LockGrant),
          repr(response))
    check("the grant names the resource, slashes and all", grant.resource_id == resource, grant.resource_id)
    check("the grant's times are datetimes, expiry after acquisition",
          isinstance(grant.acquired_at, datetime.datetime) and grant.expires_at > grant.acquired_at)
    check("the fencing token is an int", isinstance(grant.fencing_token, int) and grant.fencing_token > 0)
    check("Lock-Token header equals the body's token", response.headers.get("lock-token") == grant.token)

    # Status: typed, with the holder, never the token.
    status = get_lock.sync(resource, client=client)
    check("status is a locked LockStatus held by agent a",
          isinstance(status, LockStatus) and status.locked and status.agent_id == "sdk-agent-a", repr(status))
    check("status carries the same fencing token", status.fencing_token == grant.fencing_token)
    check("status never shows the token", "token" not in status.to_dict())

    # A contender gets a typed 409 problem naming the holder, with Retry-After.
    response = acquire_lock.sync_detailed(resource, client=client, body=AcquireRequest(agent_id="sdk-agent-b"))
    problem = response.parsed
    check("a contender gets 409 as a Problem with code lock_held",
          response.status_code == 409 and isinstance(problem, Problem) and problem.code == "lock_held",
          repr(response))
    check("the problem names the holder and when its lease ends",
          problem.agent_id == "sdk-agent-a" and problem.expires_at == grant.expires_at, repr(problem))
    check("409 carries Retry-After of at least 1 s", int(response.headers.get("retry-after", "0")) >= 1)

    # Listing finds it by prefix.
    page = list_locks.sync(client=client, prefix=resource.rsplit("/", 2)[0] + "/")
    check("list by prefix returns a LockList with just this lock",
          isinstance(page, LockList) and [lock.resource_id for lock in page.locks] == [resource], repr(page))
    check("a single page has no next cursor", page.next_cursor is None)

    # Refresh with a body, then without one (the body is optional).
    refreshed = refresh_lock.sync(resource, client=client, lock_token=grant.token,
                                  body=RefreshRequest(ttl_ms=60_000))
    check("refresh returns a LockGrant with the new length",
          isinstance(refreshed, LockGrant) and refreshed.ttl_ms == 60_000, repr(refreshed))
    check("refresh keeps the token and fencing token",
          refreshed.token == grant.token and refreshed.fencing_token == grant.fencing_token)
    check("refresh moves the expiry later", refreshed.expires_at > grant.expires_at)
    again = refresh_lock.sync(resource, client=client, lock_token=grant.token)
    check("refresh without a body goes back to the original length",
          isinstance(again, LockGrant) and again.ttl_ms == 30_000, repr(again))

    # A wrong token changes nothing: a typed 409 not_lock_owner.
    wrong = release_lock.sync(resource, client=client, lock_token=str(uuid.uuid4()))
    check("a wrong token gets Problem not_lock_owner", isinstance(wrong, Problem) and wrong.code == "not_lock_owner",
          repr(wrong))

    # Release, then the lock is free and a second release is a typed 404.
    response = release_lock.sync_detailed(resource, client=client, lock_token=grant.token)
    check("release returns 204", response.status_code == 204, repr(response))
    status = get_lock.sync(resource, client=client)
    check("status says free, with no holder fields",
          isinstance(status, LockStatus) and not status.locked and status.agent_id is UNSET, repr(status))
    gone = release_lock.sync(resource, client=client, lock_token=grant.token)
    check("releasing again gets Problem lock_not_found",
          isinstance(gone, Problem) and gone.code == "lock_not_found" and gone.status == 404, repr(gone))

    print(f"sdk: {passed} passed, 0 failed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python_sdk_check.py BASE_URL")
    main(sys.argv[1])
