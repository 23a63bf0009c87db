"""Signed artifacts: the trusted keys and the one check of a file's signature.

Owns what a usable trusted key is (EC P-256, from PEM public keys or X.509 certificates)
and how a signature is checked: DER ECDSA P-256 over the SHA-256 of the file, exactly what
`openssl dgst -sha256 -sign key.pem -out sig.der FILE` writes. It never reads the file:
callers pass the digest they computed while downloading or copying it. The daemon's
config, its download driver and the hook server all use this module.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

# cryptography is imported where a key is loaded or a signature checked, not here: it
# costs a process ~10 MB of RSS, and a device without [service] trusted_keys never needs
# it (bench/RESULTS.md).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "KEYS_EXPECTED",
    "NotVerified",
    "TrustedKey",
    "TrustedKeys",
    "UnusableKeys",
    "Verified",
    "load_private_key",
    "load_trusted_keys",
    "sign_digest",
]

KEYS_EXPECTED = (
    "a PEM file, or a directory of *.pem files, holding EC P-256 public keys or X.509 certificates"
)
"""What `[service] trusted_keys` must name; completes "must be ..."."""

MAX_KEY_FILE_BYTES = 1024 * 1024
"""A PEM file of keys or certificates is a few KiB; anything larger is not one."""

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_PUBLIC_BLOCKS = (b"PUBLIC KEY", b"CERTIFICATE")
_SHA256_BYTES = 32


class UnusableKeys(ValueError):
    """The trusted keys cannot be used; the message names the file and the problem."""


@attrs.frozen(kw_only=True)
class TrustedKey:
    source: str
    """Where the key came from: the file, and `#N` for the N-th PEM block of a file with several."""
    fingerprint: str
    """SHA-256 of the key's SubjectPublicKeyInfo (DER), hex: `openssl pkey -pubin -outform
    DER | sha256sum` prints the same."""
    key: ec.EllipticCurvePublicKey = attrs.field(eq=False, repr=False)

    def __str__(self) -> str:
        return f"{self.source} (sha256:{self.fingerprint[:16]})"

    def __reduce__(self) -> tuple[Callable[[str, bytes], TrustedKey], tuple[str, bytes]]:
        # cryptography's key objects do not pickle: the download child (upparat.io.child)
        # gets the daemon's keys as PEM and loads them with the same checks.
        from cryptography.hazmat.primitives import serialization

        pem = self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return _unpickle_key, (self.source, pem)


@attrs.frozen(kw_only=True)
class Verified:
    key: TrustedKey
    """The trusted key the signature verified with."""


@attrs.frozen(kw_only=True)
class NotVerified:
    reason: str
    """Why not, for a status message: never the file's URL."""


@attrs.frozen(kw_only=True)
class TrustedKeys:
    path: Path
    """`[service] trusted_keys` as configured."""
    keys: tuple[TrustedKey, ...]

    def verify(self, sha256: bytes, signature: bytes) -> Verified | NotVerified:
        """Does `signature` (DER ECDSA) sign the file whose SHA-256 digest is `sha256`?"""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import (
            Prehashed,
            decode_dss_signature,
        )

        if len(sha256) != _SHA256_BYTES:
            raise ValueError(f"signing: a SHA-256 digest has 32 bytes, got {len(sha256)}")
        try:
            decode_dss_signature(signature)
        except ValueError:
            return NotVerified(
                reason=f"signature: not a DER-encoded ECDSA signature ({len(signature)} bytes);"
                " expected what openssl dgst -sha256 -sign writes"
            )
        algorithm = ec.ECDSA(Prehashed(hashes.SHA256()))
        for trusted in self.keys:
            try:
                trusted.key.verify(signature, sha256, algorithm)
            except InvalidSignature:
                continue
            return Verified(key=trusted)
        count = len(self.keys)
        return NotVerified(
            reason=f"signature: does not verify the file's sha256 {sha256.hex()} with any of"
            f" the {count} trusted key{'s' if count != 1 else ''} in {self.path}"
        )


def load_trusted_keys(path: Path) -> TrustedKeys:
    """The keys in `path` (a PEM file, or a directory whose *.pem files are read).

    Raises `UnusableKeys` naming the file when one is unreadable or holds anything but
    EC P-256 public keys and certificates (a private key, RSA, another curve), or when
    there is no key at all: a typo must not silently turn checking off.
    """
    try:
        is_dir = path.is_dir()
    except OSError as e:
        raise UnusableKeys(f"{path}: {e.strerror or e}") from None
    if is_dir:
        try:
            files = sorted(p for p in path.iterdir() if p.suffix == ".pem")
        except OSError as e:
            raise UnusableKeys(f"{path}: cannot list the directory ({e.strerror or e})") from None
        if not files:
            raise UnusableKeys(f"{path}: the directory holds no *.pem file")
    elif path.exists():
        files = [path]
    else:
        raise UnusableKeys(f"{path}: no such file or directory")
    keys: list[TrustedKey] = []
    for file in files:
        keys.extend(_keys_of(file))
    return TrustedKeys(path=path, keys=tuple(keys))


def _keys_of(file: Path) -> list[TrustedKey]:
    try:
        with file.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise UnusableKeys(f"{file}: cannot be read ({e.strerror or e})") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise UnusableKeys(f"{file}: larger than {MAX_KEY_FILE_BYTES} bytes, not a key file")
    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise UnusableKeys(f"{file}: no PEM block (-----BEGIN PUBLIC KEY----- or CERTIFICATE)")
    keys: list[TrustedKey] = []
    for number, block in enumerate(blocks, start=1):
        source = str(file) if len(blocks) == 1 else f"{file}#{number}"
        keys.append(_key_of(source, block.group(1), block.group(0)))
    return keys


def _key_of(source: str, label: bytes, pem: bytes) -> TrustedKey:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    kind = label.decode("ascii")
    if label not in _PUBLIC_BLOCKS:
        if b"PRIVATE" in label:
            raise UnusableKeys(
                f"{source}: a private key ({kind}); trusted_keys takes public keys only"
                " (openssl pkey -in key.pem -pubout -out pub.pem)"
            )
        raise UnusableKeys(f"{source}: a {kind} block; expected PUBLIC KEY or CERTIFICATE")
    public: object
    try:
        if label == b"CERTIFICATE":
            # The certificate only carries the key: no chain, expiry or revocation is
            # checked (a device's clock may be far off; the key is what is trusted).
            public = x509.load_pem_x509_certificate(pem).public_key()
        else:
            public = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise UnusableKeys(f"{source}: not a valid {kind} ({e})") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        algorithm = type(public).__name__.removeprefix("_").replace("PublicKey", "")
        raise UnusableKeys(
            f"{source}: an {algorithm or 'unknown'} key; only EC P-256 (prime256v1) is supported"
        )
    if not isinstance(public.curve, ec.SECP256R1):
        raise UnusableKeys(
            f"{source}: an EC key on {public.curve.name}; only P-256 (prime256v1) is supported"
        )
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TrustedKey(source=source, fingerprint=hashlib.sha256(der).hexdigest(), key=public)


def _unpickle_key(source: str, pem: bytes) -> TrustedKey:
    return _key_of(source, b"PUBLIC KEY", pem)


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """An EC P-256 private key from unencrypted PEM; `UnusableKeys` says why not."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise UnusableKeys(f"not an unencrypted PEM private key ({e})") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        private.curve, ec.SECP256R1
    ):
        raise UnusableKeys("not an EC P-256 (prime256v1) private key")
    return private


def sign_digest(private: ec.EllipticCurvePrivateKey, sha256: bytes) -> bytes:
    """The DER signature of a file whose SHA-256 digest is `sha256`: what
    `openssl dgst -sha256 -sign` makes of the file. For `upparat-job` and the demo."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    if len(sha256) != _SHA256_BYTES:
        raise ValueError(f"signing: a SHA-256 digest has 32 bytes, got {len(sha256)}")
    return private.sign(sha256, ec.ECDSA(Prehashed(hashes.SHA256())))
