"""The test ground's certificates: one CA signs the API server's serving certificate
and every client certificate (admin, controller-manager, scheduler, nodes, users).

The API server authenticates a client certificate as user = CN, groups = O, so
minting an identity for a test is one call (`issue_client`). Keys are ECDSA P-256:
generating them is instant, and Kubernetes accepts them everywhere, including as the
service-account token signing key.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files and bytes."""

    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key_path.read_bytes()


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


class CertificateAuthority:
    """A self-signed CA kept in `folder` (ca.crt, ca.key); issues leaf certificates there."""

    def __init__(self, folder: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.folder = folder
        self._key = key
        self._cert = cert
        self.pair = KeyPair(folder / "ca.crt", folder / "ca.key")

    @classmethod
    def create(cls, folder: Path, name: str = "kubetune-test-ground-ca") -> CertificateAuthority:
        """A new CA, written to folder/ca.crt and folder/ca.key."""
        now = datetime.datetime.now(datetime.UTC)
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        ca = cls(folder, key, cert)
        _write(ca.pair.cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(ca.pair.key_path, _key_pem(key), private=True)
        return ca

    @classmethod
    def load(cls, folder: Path) -> CertificateAuthority:
        """The CA an earlier command created in `folder` (e.g. `make cluster`)."""
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{folder / 'ca.key'} is not an ECDSA key")
        cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        return cls(folder, key, cert)

    @property
    def cert_path(self) -> Path:
        return self.pair.cert_path

    def _issue(
        self,
        filename: str,
        common_name: str,
        organizations: tuple[str, ...],
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
    ) -> KeyPair:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = KeyPair(self.folder / f"{filename}.crt", self.folder / f"{filename}.key")
        _write(pair.cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(pair.key_path, _key_pem(key), private=True)
        return pair

    def issue_server(
        self, filename: str, common_name: str, dns_names: list[str], ips: list[str]
    ) -> KeyPair:
        """A TLS serving certificate for the given names and addresses."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return self._issue(filename, common_name, (), ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def issue_client(self, filename: str, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate the API server reads as `user` in `groups`."""
        return self._issue(filename, user, groups, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def write_signing_key(folder: Path) -> tuple[Path, Path]:
    """The service-account token signing key pair (sa.key, sa.pub)."""
    key = _new_key()
    private, public = folder / "sa.key", folder / "sa.pub"
    _write(private, _key_pem(key), private=True)
    _write(
        public,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return private, public
