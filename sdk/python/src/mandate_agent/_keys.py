"""An agent's Ed25519 key: client assertions (RFC 7523) and DPoP proofs (RFC 9449).

Signing is done by PyJWT on top of `cryptography`; nothing here implements cryptography.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Union

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._errors import ConfigurationError

#: Largest key file read.
MAX_KEY_FILE_BYTES = 16 * 1024
#: Lifetime of a client assertion, in seconds (the server caps it at `assertion_max_lifetime`).
ASSERTION_LIFETIME = 60

PathLike = Union[str, "os.PathLike[str]"]


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(token: str) -> str:
    """The `ath` of a DPoP proof: base64url(SHA-256(token))."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


class AgentKey:
    """An agent's Ed25519 private key.

    The key file is what ``mandate agent keygen --out FILE`` writes: a PKCS#8 PEM
    (``-----BEGIN PRIVATE KEY-----``). The private key is never shown by ``repr`` or ``str``.
    """

    __slots__ = ("_key", "_thumbprint", "_x")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError("an agent key must be an Ed25519 private key")
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._x = b64url(raw)
        # RFC 7638: the required members in lexicographic order, no whitespace.
        canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": self._x}, separators=(",", ":"), sort_keys=True)
        self._thumbprint = b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    @classmethod
    def generate(cls) -> AgentKey:
        """A fresh key (register its :attr:`public_key` with ``mandate agent add --public-key``)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes | str) -> AgentKey:
        """Reads a PKCS#8 PEM private key (unencrypted)."""
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        if len(data) > MAX_KEY_FILE_BYTES:
            raise ConfigurationError(f"the key is larger than {MAX_KEY_FILE_BYTES} bytes; expected one PKCS#8 PEM key")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            # The message of `cryptography` names the problem, never the key material.
            raise ConfigurationError(f"not a readable unencrypted PKCS#8 PEM private key: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError("the key is not an Ed25519 key; Mandate agents sign with Ed25519 (EdDSA)")
        return cls(key)

    @classmethod
    def from_file(cls, path: PathLike) -> AgentKey:
        """Reads the key file ``mandate agent keygen --out FILE`` wrote.

        Warns when the file is readable by other users (it should be mode 0600).
        """
        p = Path(path)
        try:
            st = p.stat()
            if st.st_size > MAX_KEY_FILE_BYTES:
                raise ConfigurationError(f"key file `{p}` is larger than {MAX_KEY_FILE_BYTES} bytes")
            if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.warn(
                    f"key file `{p}` is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                    "it should be readable by its owner only (chmod 600)",
                    stacklevel=2,
                )
            with p.open("rb") as f:
                data = f.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as e:
            raise ConfigurationError(f"cannot read key file `{p}`: {e.strerror or e}") from None
        try:
            return cls.from_pem(data)
        except ConfigurationError as e:
            raise ConfigurationError(f"key file `{p}`: {e}") from None

    def to_pem(self) -> bytes:
        """The private key as PKCS#8 PEM, the format of ``mandate agent keygen``."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def write(self, path: PathLike) -> None:
        """Writes the private key to a new file readable by its owner only (mode 0600)."""
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_pem())

    @property
    def public_key(self) -> str:
        """The public key to register: the raw 32 bytes, base64url (``mandate agent add --public-key``)."""
        return self._x

    @property
    def thumbprint(self) -> str:
        """RFC 7638 SHA-256 thumbprint of the public key: the ``cnf.jkt`` a bound credential names."""
        return self._thumbprint

    @property
    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 8037)."""
        return {"kty": "OKP", "crv": "Ed25519", "x": self._x}

    def assertion(self, client_id: str, audience: str, lifetime: int = ASSERTION_LIFETIME) -> str:
        """An RFC 7523 client assertion: ``iss`` = ``sub`` = the agent, ``aud`` = the token
        endpoint, a unique ``jti`` and a short ``exp``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"typ": "JWT"})

    def dpop_proof(self, method: str, url: str, access_token: str | None = None) -> str:
        """An RFC 9449 DPoP proof for one request: ``htm``, ``htu`` (without query and fragment),
        ``iat``, a unique ``jti``, and ``ath`` once there is an access token."""
        claims: dict[str, Any] = {
            "jti": str(uuid.uuid4()),
            "htm": method.upper(),
            "htu": strip_query(url),
            "iat": int(time.time()),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"typ": "dpop+jwt", "jwk": self.public_jwk})

    def __repr__(self) -> str:
        return f"AgentKey(thumbprint={self._thumbprint!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("an AgentKey is not picklable; load it from its key file where it is needed")


def strip_query(url: str) -> str:
    """The URL without its query and fragment (RFC 9449 section 4.2, ``htu``)."""
    for sep in ("?", "#"):
        i = url.find(sep)
        if i >= 0:
            url = url[:i]
    return url


def load_key(key: AgentKey | PathLike | bytes) -> AgentKey:
    """An :class:`AgentKey`, a path to a key file, or PEM bytes."""
    if isinstance(key, AgentKey):
        return key
    if isinstance(key, bytes):
        return AgentKey.from_pem(key)
    return AgentKey.from_file(key)
