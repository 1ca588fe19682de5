"""Test certificates for the reference OpenDSR partner: a self-signed X.509 certificate for
the partner's domain (RSA 2048 or EC P-256), and the signature OpenDSR puts in
`X-OpenDSR-Signature` (base64 of a signature over the raw body with a SHA-256 digest:
RSA PKCS#1 v1.5, or ECDSA with a DER-encoded signature).

Real processors must use a CA-issued certificate (the OpenDSR specification forbids
self-signed ones); dsrflow pins the certificate named in the data map either way, so a
self-signed one is enough on loopback.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

KeyType = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TestCertificate:
    """A private key and its self-signed certificate (PEM)."""

    __test__ = False  # not a pytest test class, whatever its name says

    domain: str
    key: PrivateKey = field(repr=False)
    certificate_pem: bytes

    def sign(self, body: bytes) -> str:
        """The `X-OpenDSR-Signature` value for `body`."""
        return sign(self.key, body)


def generate_key(key_type: KeyType = "rsa") -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {key_type!r}; expected 'rsa' or 'ec'")


def generate(domain: str, key_type: KeyType = "rsa", days: int = 2) -> TestCertificate:
    """A fresh key and a self-signed certificate for `domain`, valid from an hour ago."""
    key = generate_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return TestCertificate(domain, key, cert.public_bytes(serialization.Encoding.PEM))


def sign(key: PrivateKey, body: bytes) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(body, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode("ascii")
