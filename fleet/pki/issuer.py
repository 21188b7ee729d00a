"""The signer seam: what fleet needs from an issuing CA, whoever holds its key.

Everything that signs with the issuing CA (device certificates, the export-signing
certificate, verification certificates for clouds, CRLs) goes through an :class:`Issuer`.
fleet ships one implementation, :class:`fleet.pki.ca.FileIssuer` (the key decrypted from
``<home>/ca/issuing.key.pem``); one whose key lives in an HSM (PKCS#11) or a cloud KMS would
implement the same protocol and nothing above ``pki/`` would change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cryptography import x509


class Issuer(Protocol):
    """The issuing CA: its certificates and the two things its key signs.

    Callers build a complete certificate or CRL (issuer name, authority key identifier,
    extensions) and hand the builder over; the issuer only signs it, with the digest that
    goes with its key. The private key never leaves the implementation.
    """

    @property
    def cert(self) -> x509.Certificate:
        """The issuing CA certificate (the one that signs)."""
        ...

    @property
    def root(self) -> x509.Certificate:
        """The root CA certificate above it."""
        ...

    @property
    def chain_pem(self) -> bytes:
        """The issuing CA certificate followed by the root, PEM (a bundle's ``chain.pem``)."""
        ...

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign a certificate the caller built."""
        ...

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        """Sign a CRL the caller built."""
        ...

    def for_workers(self) -> IssuerFactory:
        """A picklable, zero-argument factory that gives a working issuer in another process.

        A process pool's initialiser calls it once in each worker, which then signs with
        the issuer it returns: worker processes are given a factory, never key bytes to
        rebuild a key from. What the factory carries is the implementation's decision: the
        file issuer's carries its key in memory (see :class:`fleet.pki.ca.FileIssuerFactory`);
        a PKCS#11 issuer's would carry the module path, slot and key label and open one
        session per worker, the key staying in the token.
        """
        ...


IssuerFactory = Callable[[], Issuer]
"""What :meth:`Issuer.for_workers` returns; call it in the worker process."""
