"""Signing keys for tests, made and used with the real `openssl` binary.

The signatures upparat checks are what `openssl dgst -sha256 -sign` writes, so the tests
make them that way too: a test passing with these proves the formats match.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class SigningKey:
    private: Path
    """EC P-256 private key, PEM."""
    public: Path
    """Its public key, PEM (what `[service] trusted_keys` names)."""

    def certificate(self) -> Path:
        """A self-signed X.509 certificate of the key (made on first use)."""
        cert = self.public.with_suffix(".crt.pem")
        if not cert.exists():
            _openssl(
                "req", "-new", "-x509", "-key", str(self.private), "-subj", "/CN=upparat test",
                "-days", "1", "-out", str(cert),
            )  # fmt: skip
        return cert

    def sign(self, file: Path) -> bytes:
        """DER ECDSA signature of `file`'s SHA-256: `openssl dgst -sha256 -sign`."""
        sig = file.with_name(file.name + f".{self.private.stem}.sig")
        _openssl("dgst", "-sha256", "-sign", str(self.private), "-out", str(sig), str(file))
        data = sig.read_bytes()
        sig.unlink()
        return data


def make_key(directory: Path, name: str) -> SigningKey:
    """A fresh EC P-256 key pair `<name>.key` / `<name>.pem` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(private))
    _openssl("pkey", "-in", str(private), "-pubout", "-out", str(public))
    return SigningKey(private=private, public=public)


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")
