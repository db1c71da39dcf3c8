"""Self-signed certificates for the router's TLS tests (each its own CA: trust it by its file)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path, name: str, *, ip: str | None = None,
                prefix: str = "") -> tuple[str, str]:
    """Write ``<prefix>cert.pem`` and ``<prefix>key.pem`` into ``directory``: a certificate
    for DNS name ``name`` (and ``ip``, when given) valid for a day; returns both paths."""
    private = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    # Each its own subject: a trust store holding two CAs of one name finds only one of them.
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"dit4c test {serial}"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    if ip is not None:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(private.public_key()).serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256()))
    cert_path, key_path = directory / f"{prefix}cert.pem", directory / f"{prefix}key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def der(cert_file: str) -> bytes:
    """The certificate in ``cert_file`` (PEM) as DER: what ``getpeercert(True)`` returns."""
    pem = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    return pem.public_bytes(serialization.Encoding.DER)
