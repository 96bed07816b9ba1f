"""Proof of identity in `hello`: challenge and response over a shared secret.

The side that checks (the verifier) sends a fresh random challenge; the
other side answers with HMAC-SHA256(secret, context), where the context
binds the challenge, the prover's role and the identity it claims. The
secret never crosses the wire; a proof is good for one challenge only, so a
captured one replays into nothing; a proof made as one role cannot be
reflected back as the other. Proofs are compared in constant time.

Two secrets use it (PROTOCOL.md section 5.4):

- a unit's *enrollment* (`Enrollment`): issued by cmdr to a unit that dials
  in (`latis unit add NAME --accept …`); the unit proves it to cmdr's
  listeners, which challenge in their `hello`;
- a unit's *token* (`latis-unit --listen … --token-file F`): cmdr proves
  it to a unit that listens, which challenges with `auth_required`; the unit
  proves it back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path
from typing import ClassVar

import attrs

__all__ = [
    "METHOD",
    "Enrollment",
    "new_challenge",
    "prove",
    "read_secret_file",
    "verify",
]

#: The one proof method of protocol version 1.
METHOD = "hmac-sha256"
_CONTEXT = b"latis-auth-1"
#: Random bytes in a challenge and in a secret made here.
NONCE_BYTES = 32
#: A challenge as sent: 32 bytes, base64url without padding.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
#: The shortest token a unit accepts.
MIN_TOKEN = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_challenge() -> str:
    """A fresh challenge (32 random bytes, base64url)."""
    return _b64(secrets.token_bytes(NONCE_BYTES))


def is_challenge(value: object) -> bool:
    """Whether `value` has the shape of a challenge (checked before any use)."""
    return isinstance(value, str) and _CHALLENGE.fullmatch(value) is not None


def prove(secret: bytes, role: str, challenge: str, identity: str = "") -> str:
    """The answer to `challenge` by the `role` side claiming `identity`."""
    message = b"\0".join(
        [_CONTEXT, role.encode(), identity.encode(), challenge.encode("ascii")]
    )
    return _b64(hmac.new(secret, message, hashlib.sha256).digest())


def verify(secret: bytes, role: str, challenge: str, identity: str, proof: object) -> bool:
    """Whether `proof` answers `challenge` for `role` and `identity` (constant time)."""
    if not isinstance(proof, str) or not proof.isascii():
        return False
    return hmac.compare_digest(prove(secret, role, challenge, identity), proof)


def read_secret_file(path: str | os.PathLike[str], what: str = "token file") -> bytes:
    """Read a secret from `path`: its text without surrounding whitespace.

    Like ssh with its keys, refuses a file that others may read.

    Raises:
        ValueError: the file is missing, readable by group or others, or too short.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {p}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"the {what} {p} may be read by others (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod 600 {p}`"
        )
    if len(text) < MIN_TOKEN:
        raise ValueError(f"the {what} {p} holds {len(text)} characters; at least {MIN_TOKEN}")
    return text.encode()


@attrs.frozen(repr=False)
class Enrollment:
    """A unit's credentials for dialing in: cmdr's id for it and the shared secret.

    Written as one line, `latis-enroll-1:ID:SECRET` (`line`, `parse`).
    """

    id: str
    secret: bytes

    PREFIX: ClassVar[str] = "latis-enroll-1"

    def __repr__(self) -> str:  # never print the secret
        return f"Enrollment(id={self.id!r})"

    @classmethod
    def new(cls) -> Enrollment:
        """A new enrollment: a random id and a random secret."""
        return cls("u" + secrets.token_hex(8), _b64(secrets.token_bytes(NONCE_BYTES)).encode())

    @property
    def line(self) -> str:
        """The enrollment as one line (what the unit's secret file holds)."""
        return f"{self.PREFIX}:{self.id}:{self.secret.decode()}"

    @classmethod
    def parse(cls, text: str) -> Enrollment:
        """Read `line`'s form.

        Raises:
            ValueError: not an enrollment line.
        """
        prefix, _, rest = text.strip().partition(":")
        ident, _, secret = rest.partition(":")
        if prefix != cls.PREFIX or not re.fullmatch(r"[a-z0-9]{1,64}", ident) or len(
            secret
        ) < MIN_TOKEN:
            raise ValueError(
                f"not an enrollment: expected {cls.PREFIX}:ID:SECRET "
                "(the line `latis unit add --accept` printed)"
            )
        return cls(ident, secret.encode())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Enrollment:
        """Read an enrollment from a secret file (see `read_secret_file`)."""
        return cls.parse(read_secret_file(path, "enrollment file").decode())
