"""TLS for latis's transports: cmdr's own CA, certificates, contexts and pins.

cmdr creates a CA on first use (`CertificateAuthority.load_or_create`) and
issues from it the certificate its listeners present. That certificate names
`CMDR_NAME`, a name under `.invalid` that no public CA issues, with the
`serverAuth` usage only: a unit that pins cmdr's CA checks that the peer
holds a certificate the CA issued *for cmdr*, wherever cmdr is reached
(its address can change; its CA does not). Certificates the CA issues to
units (mTLS) carry `clientAuth` only, so a unit's certificate can never pass
as cmdr's.

A pin is `sha256:HEX`, the SHA-256 of a certificate's DER bytes
(`openssl x509 -noout -fingerprint -sha256` prints the same digest). It may
name the peer's own certificate (a unit's self-signed one) or the CA that
issued it (cmdr's, sent along in its chain).

`cryptography` is imported only by what creates or checks certificates.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from latis_core._errors import ConnectError

__all__ = [
    "CMDR_NAME",
    "CertificateAuthority",
    "TlsFiles",
    "check_pin",
    "client_context",
    "fingerprint",
    "normalize_pin",
    "peer_chain",
    "self_signed",
    "server_context",
    "tls_connect",
]

#: The name in cmdr's server certificate, checked by units that pin its CA.
CMDR_NAME = "cmdr.latis.invalid"
#: How long certificates made here last.
LIFETIME = datetime.timedelta(days=3650)
#: `_ssl.ENCODING_DER`: how Python before 3.13 names DER for a chain's certificates.
_ENCODING_DER = 2


def fingerprint(der: bytes) -> str:
    """The pin of a certificate (DER bytes): `sha256:` and 64 hex digits."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalize_pin(text: str) -> str:
    """Read a pin as users write it: `sha256:AB:CD…`, `AB CD…` or plain hex.

    Raises:
        ValueError: not 32 bytes of hex, with or without `sha256:`.
    """
    body = text.strip()
    if body.lower().startswith("sha256:"):
        body = body[7:]
    digits = body.replace(":", "").replace(" ", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(
            f"{text!r} is not a certificate fingerprint: expected sha256: and 64 hex digits"
        )
    return "sha256:" + digits


def _pem_der(pem: bytes) -> bytes:
    """The DER bytes of the first certificate in `pem` (a chain starts with its own)."""
    end = b"-----END CERTIFICATE-----"
    first = pem[: pem.index(end) + len(end)]
    return ssl.PEM_cert_to_DER_cert(first.decode("ascii"))


@attrs.frozen
class TlsFiles:
    """A certificate chain and its key, as files (what `ssl` loads).

    Attributes:
        cert: PEM: the certificate, then its issuer's (if any).
        key: PEM: the private key (mode 0600).
        fingerprint: the pin of the certificate itself.
    """

    cert: Path
    key: Path
    fingerprint: str


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _sans(hosts: Sequence[str]) -> list[Any]:
    from cryptography import x509

    names: list[Any] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(subject: str, public_key: Any, issuer: Any = None) -> Any:
    """A certificate for `subject`, issued by `issuer` (an x509.Name; None: itself)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer if issuer is not None else name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + LIFETIME)
    )


def _leaf_extensions(builder: Any, hosts: Sequence[str], *, server: bool, client: bool) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return (
        builder.add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )


class CertificateAuthority:
    """A CA kept as two files in a directory (`ca.pem`, `ca.key` mode 0600).

    Made by `load_or_create`. `fingerprint` is what units pin.
    """

    def __init__(self, directory: Path, cert_pem: bytes, key: Any) -> None:
        from cryptography import x509

        self.directory = directory
        self.cert_pem = cert_pem
        self._cert = x509.load_pem_x509_certificate(cert_pem)
        self._key = key
        self.fingerprint = fingerprint(_pem_der(cert_pem))

    @property
    def cert_file(self) -> Path:
        """The CA certificate (PEM), for `ca =` options and mTLS."""
        return self.directory / "ca.pem"

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str], name: str = "latis cmdr CA"
                       ) -> CertificateAuthority:
        """Load the CA in `directory`, creating it (and the directory, 0700) if absent."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        path = Path(directory)
        cert_file, key_file = path / "ca.pem", path / "ca.key"
        if cert_file.exists() and key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            return cls(path, cert_file.read_bytes(), key)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = _new_key()
        from cryptography.hazmat.primitives import hashes

        cert = (
            _builder(name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        _write_private(key_file, _key_pem(key))
        cert_file.write_bytes(cert_pem)
        return cls(path, cert_pem, key)

    def issue(
        self,
        name: str,
        hosts: Sequence[str],
        *,
        server: bool = True,
        client: bool = False,
    ) -> tuple[bytes, bytes]:
        """Issue a certificate for `hosts`; return (chain PEM: it then the CA, key PEM)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        key = _new_key()
        cert = (
            _leaf_extensions(
                _builder(name, key.public_key(), self._cert.subject),
                hosts, server=server, client=client,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem, _key_pem(key)

    def files(
        self, stem: str, name: str, hosts: Sequence[str], *, server: bool = True,
        client: bool = False,
    ) -> TlsFiles:
        """`issue` once into `STEM.pem` and `STEM.key` in the CA's directory; reuse after."""
        cert_file = self.directory / f"{stem}.pem"
        key_file = self.directory / f"{stem}.key"
        if not (cert_file.exists() and key_file.exists()):
            chain, key = self.issue(name, hosts, server=server, client=client)
            _write_private(key_file, key)
            cert_file.write_bytes(chain)
        return TlsFiles(cert_file, key_file, fingerprint(_pem_der(cert_file.read_bytes())))

    def cmdr_files(self) -> TlsFiles:
        """cmdr's server certificate (for `CMDR_NAME`), issued on first use."""
        return self.files("cmdr", "latis cmdr", [CMDR_NAME])


def self_signed(directory: str | os.PathLike[str], hosts: Sequence[str]) -> TlsFiles:
    """A self-signed server certificate kept in `directory` (a unit's), made on first use.

    Its fingerprint is what a controller pins (`fingerprint =`).
    """
    from cryptography.hazmat.primitives import hashes, serialization

    path = Path(directory)
    cert_file, key_file = path / "unit.pem", path / "unit.key"
    if not (cert_file.exists() and key_file.exists()):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = _new_key()
        cert = _leaf_extensions(
            _builder("latis unit", key.public_key()), hosts,
            server=True, client=False,
        ).sign(key, hashes.SHA256())
        _write_private(key_file, _key_pem(key))
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(cert_file, key_file, fingerprint(_pem_der(cert_file.read_bytes())))


def server_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    *,
    client_ca: str | os.PathLike[str] | None = None,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """A server's context: TLS 1.2 or newer; with `client_ca`, clients must show a
    certificate that CA issued (mTLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No session tickets: latis's clients never resume a session, and each TLS 1.3
    # ticket costs the server an encryption and a write per handshake (a fleet
    # redialing after a restart is thousands of handshakes).
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=os.fspath(client_ca))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(
    *,
    ca: str | os.PathLike[str] | None = None,
    pin: str | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """A client's context.

    With `pin`, the server is checked after the handshake by `check_pin`
    (OpenSSL accepts any certificate here; nothing is sent before the check).
    Otherwise it is verified against `ca` (a PEM file) or the system's CAs,
    host name included. `cert` and `key` are ours, for mTLS.
    """
    if pin is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=os.fspath(ca) if ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The certificates the peer sent (DER), its own first."""
    getter = getattr(ssl_object, "get_unverified_chain", None)  # public from 3.13
    if getter is None:
        getter = ssl_object._sslobj.get_unverified_chain  # type: ignore[union-attr]
    chain = getter() or []
    return [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain]


def check_pin(chain: Sequence[bytes], pin: str, *, what: str = "the peer") -> None:
    """Check that the peer's chain (DER, its own first) matches `pin`.

    The pin may be the peer's own certificate; or a CA in its chain, which
    must then have issued the peer's certificate for `CMDR_NAME` with the
    `serverAuth` usage, valid now.

    Raises:
        ConnectError: no match, saying what the peer showed.
    """
    if not chain:
        raise ConnectError(f"{what} showed no TLS certificate")
    pin = normalize_pin(pin)
    prints = [fingerprint(der) for der in chain]
    if prints[0] == pin:
        return
    if pin not in prints[1:]:
        raise ConnectError(
            f"{what}'s TLS certificate does not match the pinned {pin} "
            f"(it showed {prints[0]}"
            + (f", issued by {', '.join(prints[1:])}" if len(prints) > 1 else "")
            + ")"
        )
    from cryptography import x509
    from cryptography.x509 import DNSName
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    ca = x509.load_der_x509_certificate(chain[prints.index(pin)])
    leaf = x509.load_der_x509_certificate(chain[0])
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(DNSName(CMDR_NAME))
    try:
        verifier.verify(leaf, [])
    except VerificationError as exc:
        raise ConnectError(
            f"{what}'s TLS certificate was not issued by the pinned CA {pin} for cmdr: {exc}"
        ) from exc


async def tls_connect(
    stream: trio.abc.Stream,
    *,
    server_hostname: str | None = None,
    ca: str | os.PathLike[str] | None = None,
    pin: str | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    what: str = "the peer",
) -> trio.SSLStream[trio.abc.Stream]:
    """Run TLS's client side over `stream`: handshake, then check the server.

    With `pin`, `check_pin` decides; otherwise OpenSSL verifies against `ca`
    (or the system's CAs) and `server_hostname`.

    Raises:
        ConnectError: the handshake failed or the server is not the one expected.
    """
    ctx = client_context(ca=ca, pin=pin, cert=cert, key=key)
    tls = trio.SSLStream(
        stream, ctx, server_hostname=None if pin is not None else server_hostname
    )
    try:
        await tls.do_handshake()
    except (ssl.SSLError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        hint = ""
        if isinstance(cause, ssl.SSLCertVerificationError) and pin is None and ca is None:
            # A unit's own certificate is self-signed: it is pinned, not verified.
            hint = (" (pin the unit's certificate: ?fingerprint=sha256:... in the address, "
                    "as `latis-unit --listen ... --tls` prints it)")
        raise ConnectError(f"TLS with {what} failed: {_reason(cause)}{hint}") from exc
    if pin is not None:
        check_pin(peer_chain(tls._ssl_object), pin, what=what)
    return tls


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc) if exc is not None else "the connection closed"
