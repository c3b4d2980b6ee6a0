"""Interop check with OAuth/JWT libraries nobody here wrote.

authlib signs the private_key_jwt client assertion and runs the client-credentials grant;
PyJWT verifies the issued task credential against Mandate's JWKS and signs the assertions for
introspection (RFC 7662) and revocation (RFC 7009); requests does the HTTP.

Environment: MANDATE_URL, AGENT_ID, AGENT_KEY (PKCS#8 PEM of the agent's Ed25519 key).
Prints one JSON line of findings; exits non-zero on the first mismatch.
"""
import json
import os
import sys
import time
import uuid

import jwt
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT

BASE = os.environ["MANDATE_URL"]
AGENT = os.environ["AGENT_ID"]
KEY_PEM = open(os.environ["AGENT_KEY"], "rb").read()


def check(cond, what):
    if not cond:
        print(f"interop check failed: {what}", file=sys.stderr)
        sys.exit(1)


meta = requests.get(f"{BASE}/.well-known/oauth-authorization-server", timeout=10).json()
check(meta["issuer"] == BASE, "metadata issuer")
token_endpoint = meta["token_endpoint"]
check("private_key_jwt" in meta["token_endpoint_auth_methods_supported"], "private_key_jwt advertised")

# 1. authlib runs the grant, signing its own client assertion (EdDSA).
session = OAuth2Session(
    client_id=AGENT,
    client_secret=KEY_PEM,
    token_endpoint_auth_method=PrivateKeyJWT(token_endpoint, alg="EdDSA"),
    scope="read:reports",
)
session.register_client_auth_method(PrivateKeyJWT(token_endpoint, alg="EdDSA"))
token = session.fetch_token(token_endpoint, grant_type="client_credentials")
access = token["access_token"]
check(token["token_type"] == "Bearer", "token type")
check(token["scope"] == "read:reports", f"granted scope {token['scope']}")

# 2. PyJWT verifies the credential against the published JWKS.
jwks = requests.get(meta["jwks_uri"], timeout=10).json()
header = jwt.get_unverified_header(access)
check(header["alg"] == "EdDSA" and header["typ"] == "at+jwt", f"header {header}")
key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
claims = jwt.decode(
    access,
    key=key.key,
    algorithms=["EdDSA"],
    audience=BASE,
    issuer=BASE,
    options={"require": ["exp", "iat", "sub", "jti"]},
)
check(claims["sub"] == AGENT and claims["client_id"] == AGENT, "subject and client")
check(claims["task_id"] == token["task_id"], "task id claim")
check(claims["authorization_details"][0]["type"] == "mandate_task", "authorization details")
# A tampered credential must not verify.
parts = access.split(".")
try:
    jwt.decode(parts[0] + "." + parts[1] + "." + parts[2][::-1], key=key.key, algorithms=["EdDSA"], audience=BASE)
    check(False, "tampered token verified")
except jwt.InvalidTokenError:
    pass


def assertion():
    now = int(time.time())
    return jwt.encode(
        {"iss": AGENT, "sub": AGENT, "aud": token_endpoint, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())},
        KEY_PEM,
        algorithm="EdDSA",
    )


def client_form(**extra):
    form = {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion(),
    }
    form.update(extra)
    return form


# 3. Introspection (RFC 7662) with a PyJWT-signed assertion.
r = requests.post(meta["introspection_endpoint"], data=client_form(token=access), timeout=10)
check(r.status_code == 200, f"introspection status {r.status_code} {r.text}")
info = r.json()
check(info["active"] is True and info["scope"] == "read:reports", f"introspection {info}")

# 4. The credential works at the decision point.
r = requests.post(f"{BASE}/v1/decide", headers={"Authorization": f"Bearer {access}"},
                  json={"action": "read", "resource": {"type": "resource", "id": "reports"}}, timeout=10)
check(r.status_code == 200 and r.json()["decision"] == "allow", f"decide {r.status_code} {r.text}")

# 5. Revocation (RFC 7009) completes the task; the credential is dead everywhere.
r = requests.post(meta["revocation_endpoint"], data=client_form(token=access), timeout=10)
check(r.status_code == 200, f"revocation status {r.status_code} {r.text}")
r = requests.post(meta["introspection_endpoint"], data=client_form(token=access), timeout=10)
check(r.json() == {"active": False}, f"introspection after revocation {r.text}")
r = requests.post(f"{BASE}/v1/decide", headers={"Authorization": f"Bearer {access}"},
                  json={"action": "read", "resource": {"type": "resource", "id": "reports"}}, timeout=10)
check(r.status_code == 401, f"decide after revocation {r.status_code}")

print(json.dumps({"ok": True, "task_id": token["task_id"], "kid": header["kid"]}))
