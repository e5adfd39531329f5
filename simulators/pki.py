"""A throw-away certificate authority for TLS tests and demos.

Why: devices authenticate to the broker with client certificates, and the broker turns the
certificate's CN into the MQTT username its ACL checks (``use_identity_as_username``). Tests
need a real CA, a server certificate for loopback and one certificate per device, without
committing keys to the repository. Keys are EC P-256 (what small devices handle well) and
certificates live a few days, so nothing generated here is worth stealing.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The CN becomes the MQTT username and a file name: MQTT wildcards or "/" would break both.
_SAFE_CN = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files one TLS endpoint needs: the CA it trusts and, optionally, its own cert and key."""

    cafile: Path
    certfile: Path | None = None
    keyfile: Path | None = None


class Pki:
    """A CA on disk that can issue client certificates; made by :func:`create_pki`.

    ``ca_cert`` is the CA's PEM path; ``server`` the broker's :class:`TlsFiles`.
    """

    server: TlsFiles

    def __init__(self, directory: Path, ca_key: ec.EllipticCurvePrivateKey,
                 ca_cert: x509.Certificate, days: int) -> None:
        self.directory = directory
        self.ca_cert = directory / "ca.crt"
        self._ca_key = ca_key
        self._ca = ca_cert
        self._days = days

    def client(self, cn: str) -> TlsFiles:
        """Issue a client certificate whose CN (the broker's MQTT username) is ``cn``."""
        if not _SAFE_CN.fullmatch(cn):
            raise ValueError(f"client CN {cn!r} must match {_SAFE_CN.pattern}")
        return self._issue(f"client-{cn}", cn, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _issue(self, stem: str, cn: str, usage: x509.ObjectIdentifier,
               sans: list[x509.GeneralName]) -> TlsFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _base_builder(_name(cn), key.public_key(), self._days)
            .issuer_name(self._ca.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                           critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        certfile, keyfile = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        _write_cert(certfile, cert)
        _write_key(keyfile, key)
        return TlsFiles(cafile=self.ca_cert, certfile=certfile, keyfile=keyfile)


def create_pki(directory: Path | str, *, days: int = 3,
               hostnames: tuple[str, ...] = ("localhost",),
               ips: tuple[str, ...] = ("127.0.0.1",)) -> Pki:
    """Create a CA and a server certificate for loopback in ``directory`` (PEM files).

    The server certificate names both ``localhost`` and ``127.0.0.1`` so clients verify the
    broker's hostname whichever way they address it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("ansim test CA")
    cert = (
        _base_builder(name, key.public_key(), days)
        .issuer_name(name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    pki = Pki(directory, key, cert, days)
    _write_cert(pki.ca_cert, cert)
    _write_key(directory / "ca.key", key)
    sans = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    pki.server = pki._issue("server", (hostnames or ips)[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)
    return pki


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _base_builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int) -> x509.CertificateBuilder:
    # Backdated a little so a client whose clock lags the test machine's still accepts it.
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
