"""RFC 8693 token exchange (delegation) driven by clients nobody here wrote.

`requests` posts the exchange as a plain form, PyJWT signs both agents' client assertions and
verifies the issued sub-task credential against Mandate's JWKS, including its nested `act`
claims (RFC 8693 section 4.1).

Environment: MANDATE_URL, PARENT_ID, PARENT_KEY, CHILD_ID, CHILD_KEY, GRANDCHILD_ID,
GRANDCHILD_KEY (PKCS#8 PEM files of the agents' Ed25519 keys). The parent's envelope must hold
`read:reports` and `read:customers`; the children's `read:reports`.
Prints one JSON line of findings; exits non-zero on the first mismatch.
"""
import json
import os
import sys
import time
import uuid

import jwt
import requests

BASE = os.environ["MANDATE_URL"]
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def check(cond, what):
    if not cond:
        print(f"token exchange check failed: {what}", file=sys.stderr)
        sys.exit(1)


meta = requests.get(f"{BASE}/.well-known/oauth-authorization-server", timeout=10).json()
check(EXCHANGE in meta["grant_types_supported"], f"token exchange advertised: {meta['grant_types_supported']}")
token_endpoint = meta["token_endpoint"]
jwks = jwt.PyJWKSet.from_dict(requests.get(meta["jwks_uri"], timeout=10).json())


def agent(prefix):
    return os.environ[f"{prefix}_ID"], open(os.environ[f"{prefix}_KEY"], "rb").read()


def assertion(who):
    ident, pem = who
    now = int(time.time())
    return jwt.encode(
        {"iss": ident, "sub": ident, "aud": token_endpoint, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())},
        pem,
        algorithm="EdDSA",
    )


def verify(token):
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, key=jwks[kid].key, algorithms=["EdDSA"], audience=BASE, issuer=BASE,
                      options={"require": ["exp", "iat", "sub", "jti"]})


def details(ttl, *targets):
    return json.dumps([{"type": "mandate_task", "intent": "interop", "ttl": ttl,
                        "access": [{"identifier": t, "actions": ["read"]} for t in targets]}])


parent, child, grandchild = agent("PARENT"), agent("CHILD"), agent("GRANDCHILD")

# The parent opens its own task.
r = requests.post(token_endpoint, data={
    "grant_type": "client_credentials",
    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "client_assertion": assertion(parent),
    "authorization_details": details(600, "reports", "customers"),
}, timeout=10)
check(r.status_code == 200, f"parent task {r.status_code} {r.text}")
parent_token = r.json()["access_token"]
parent_claims = verify(parent_token)


def exchange(subject, actor, ttl, *targets):
    return requests.post(token_endpoint, data={
        "grant_type": EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS,
        "actor_token": assertion(actor),
        "actor_token_type": JWT_TYPE,
        "requested_token_type": ACCESS,
        "authorization_details": details(ttl, *targets),
    }, timeout=10)


# One hop: the child acts for the parent's workflow.
r = exchange(parent_token, child, 300, "reports")
check(r.status_code == 200, f"exchange {r.status_code} {r.text}")
body = r.json()
check(body["issued_token_type"] == ACCESS, f"issued_token_type {body}")
check(body["token_type"] == "Bearer", f"token_type {body}")
child_token = body["access_token"]
c = verify(child_token)
check(c["sub"] == parent[0], f"sub stays the workflow's subject: {c['sub']}")
check(c["client_id"] == child[0], f"client_id is the acting agent: {c['client_id']}")
check(c["act"] == {"sub": child[0]}, f"act {c.get('act')}")
check(c["exp"] <= parent_claims["exp"], "child outlives parent")
check(c["scope"] == "read:reports", f"scope {c['scope']}")

# Two hops: nested act, newest actor on top.
r = exchange(child_token, grandchild, 120, "reports")
check(r.status_code == 200, f"second exchange {r.status_code} {r.text}")
g = verify(r.json()["access_token"])
check(g["act"] == {"sub": grandchild[0], "act": {"sub": child[0]}}, f"nested act {g.get('act')}")
check(g["sub"] == parent[0], "sub after two hops")

# Asking for more than the parent holds is refused with the reason (S6).
r = exchange(child_token, grandchild, 60, "customers")
check(r.status_code == 400, f"amplification status {r.status_code}")
err = r.json()
check(err["error"] == "invalid_authorization_details", f"amplification error {err}")
check("beyond what task" in err["error_description"], f"amplification reason {err}")

# The sub-task credential works at the decision point, and dies with its parent.
decide = lambda tok: requests.post(f"{BASE}/v1/decide", headers={"Authorization": f"Bearer {tok}"},
                                   json={"action": "read", "resource": {"type": "resource", "id": "reports"}},
                                   timeout=10)
check(decide(child_token).json()["decision"] == "allow", "child decides")
r = requests.post(meta["revocation_endpoint"], data={
    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    "client_assertion": assertion(parent),
    "token": parent_token,
}, timeout=10)
check(r.status_code == 200, f"revocation {r.status_code}")
check(decide(child_token).status_code == 401, "child credential outlived its parent")

print(json.dumps({"ok": True, "child_task": body["task_id"], "act": g["act"]}))
