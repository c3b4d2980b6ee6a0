"""An external identity provider nobody here wrote: keys and tokens made with `cryptography` and
PyJWT, as an OIDC provider or a SPIFFE JWT-SVID issuer would make them.

Writes the issuer's JWKS to $JWKS_PATH (served over HTTP by the test, and read as a file), then
presents RS256, ES256 and EdDSA tokens to Mandate's token endpoint as client assertions. The
EdDSA key is added to the JWKS only after the first tokens were accepted, so Mandate must refetch
the JWKS when it sees the unknown `kid`.

Environment: MANDATE_URL, JWKS_PATH, ISSUER, SVID_AGENT (agent id = SPIFFE ID, JWKS by URL),
FILE_AGENT (agent registered with the JWKS file path and subject "file-subject").
"""
import json
import os
import sys
import time

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

BASE = os.environ["MANDATE_URL"]
JWKS_PATH = os.environ["JWKS_PATH"]
ISSUER = os.environ["ISSUER"]
SVID_AGENT = os.environ["SVID_AGENT"]
FILE_AGENT = os.environ["FILE_AGENT"]
TOKEN = f"{BASE}/oauth/token"

keys = {
    "rsa-1": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
    "ec-1": ("ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
    "ed-1": ("EdDSA", ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
}


def publish(kids):
    out = []
    for kid in kids:
        alg, key, algo = keys[kid]
        jwk = json.loads(algo.to_jwk(key.public_key()))
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        out.append(jwk)
    with open(JWKS_PATH + ".tmp", "w") as f:
        json.dump({"keys": out}, f)
    os.replace(JWKS_PATH + ".tmp", JWKS_PATH)


def svid(kid, sub, aud=BASE, **extra):
    alg, key, _ = keys[kid]
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": sub, "aud": [aud], "iat": now, "exp": now + 300}
    claims.update(extra)
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def ask(assertion, client_id=None, kind="urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"):
    form = {"grant_type": "client_credentials", "client_assertion_type": kind,
            "client_assertion": assertion, "scope": "read:inventory"}
    if client_id:
        form["client_id"] = client_id
    return requests.post(TOKEN, data=form, timeout=10)


def expect(resp, status, what):
    if resp.status_code != status:
        print(f"{what}: expected {status}, got {resp.status_code} {resp.text}", file=sys.stderr)
        sys.exit(1)


publish(["rsa-1", "ec-1"])
results = {}
# SPIFFE: the agent id is the SPIFFE ID, so no client_id is needed.
for kid in ["rsa-1", "ec-1"]:
    r = ask(svid(kid, SVID_AGENT, team="blue"))
    expect(r, 200, f"{keys[kid][0]} JWT-SVID")
    results[keys[kid][0]] = r.json()["task_id"]
# A claim that does not match the registration, a foreign audience, a foreign subject.
expect(ask(svid("rsa-1", SVID_AGENT, team="red")), 401, "wrong claim")
expect(ask(svid("rsa-1", SVID_AGENT, aud="https://elsewhere", team="blue")), 401, "wrong audience")
expect(ask(svid("ec-1", "spiffe://example.org/agent/other", team="blue"), client_id=SVID_AGENT), 401, "wrong subject")
# A key the issuer has not published yet is unknown…
expect(ask(svid("ed-1", SVID_AGENT, team="blue")), 401, "unpublished key")
# …until the issuer publishes it: Mandate refetches the JWKS on the unknown kid.
publish(["rsa-1", "ec-1", "ed-1"])
r = ask(svid("ed-1", SVID_AGENT, team="blue"))
expect(r, 200, "EdDSA JWT-SVID after rotation")
results["EdDSA"] = r.json()["task_id"]
# The same issuer's JWKS read from a file, for an OIDC-style agent identified by client_id.
r = ask(svid("ed-1", "file-subject"), client_id=FILE_AGENT,
        kind="urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
expect(r, 200, "EdDSA OIDC token, JWKS from file")
print(json.dumps({"ok": True, "tasks": results}))
