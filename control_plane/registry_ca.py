"""The certificate authority the image server trusts for the portal's tokens.

Distribution 2.8 reads its ``rootcertbundle`` once, at start, and trusts a token whose header
carries an ``x5c`` chain that verifies against that bundle. So the bundle holds one long-lived
CA certificate (:meth:`CertificateAuthority.pem`), and every token carries a short-lived leaf
certificate that this CA made for the signing key in use (:meth:`CertificateAuthority.certify`).
Signing keys then rotate exactly as for every other token (``keys.py``: ``rotate``, later
``retire``) without the registry being touched; only replacing the CA itself means giving the
registry a new bundle (both certificates in it during the change).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.tokens import PublicKey

CA_NAME = "dit4c registry token CA"
CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=7)
CLOCK_SKEW = datetime.timedelta(hours=1)
"""Certificates start this much in the past, so a verifier whose clock is behind accepts them."""


def _usage(*, sign_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not sign_certificates, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=sign_certificates, crl_sign=sign_certificates,
                         encipher_only=False, decipher_only=False)


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls, now: datetime.datetime | None = None) -> CertificateAuthority:
        now = now or datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(sign_certificates=True), critical=True)
            .sign(key, hashes.SHA256()))
        return cls(key, certificate)

    @classmethod
    def from_pem(cls, key_pem: str, certificate_pem: str) -> CertificateAuthority:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the registry CA key must be an EC key")
        return cls(key, x509.load_pem_x509_certificate(certificate_pem.encode()))

    def key_pem(self) -> str:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()

    def pem(self) -> str:
        """The CA certificate: the registry's ``rootcertbundle``."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def certify(self, public: PublicKey, subject: str,
                now: datetime.datetime | None = None) -> x509.Certificate:
        """A leaf certificate for the public key ``public``, valid :data:`LEAF_LIFETIME`."""
        now = now or datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject[:64])]))
            .issuer_name(self.certificate.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(sign_certificates=False), critical=True)
            .sign(self.key, hashes.SHA256()))
