"""SWUpdate bundles (`.swu`) for the tests and the demo: sw-description, its CMS signature
and a cpio archive in the "new ASCII with CRC" format, as SWUpdate reads them.

Signing keys are throw-away ones made with the `openssl` command here; nothing is read
from or written to the machine's own SWUpdate setup. Not used on devices.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

CPIO_CRC_MAGIC = b"070702"
"""The "new ASCII" cpio format with a checksum (GNU cpio `-H crc`); SWUpdate checks it."""
CPIO_TRAILER = "TRAILER!!!"
HARDWARE_REVISION = "1.0"
"""The revision the test device reports (`-H <board>:1.0`) and good bundles accept."""


# --- cpio, "new ASCII with CRC" (070702) ---------------------------------------------------


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def cpio_member(name: str, data: bytes, *, ino: int, mode: int = 0o100644) -> bytes:
    """One archive member: a 110-byte header, the name, the data.

    The header is the magic and 13 fields of 8 upper-case hex digits: ino, mode, uid,
    gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize (with
    the name's NUL) and check. The name (NUL-terminated) is padded with NULs so that
    header + name is a multiple of 4 bytes, and the data likewise. `check` is the sum of
    all data bytes, modulo 2**32 (what "CRC" means in this format; 0 for the trailer).
    """
    encoded = name.encode() + b"\0"
    fields = (
        ino,
        mode,
        0,  # uid
        0,  # gid
        1,  # nlink
        0,  # mtime: fixed, so the same input gives the same archive
        len(data),
        0,  # devmajor
        0,  # devminor
        0,  # rdevmajor
        0,  # rdevminor
        len(encoded),
        sum(data) & 0xFFFFFFFF,
    )
    header = CPIO_CRC_MAGIC + b"".join(b"%08X" % field for field in fields)
    head = header + encoded
    return head + _pad4(len(head)) + data + _pad4(len(data))


def cpio_crc(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An archive of (name, data) in the given order, ended by the TRAILER!!! entry."""
    parts = [cpio_member(name, data, ino=i) for i, (name, data) in enumerate(members, 1)]
    parts.append(cpio_member(CPIO_TRAILER, b"", ino=0, mode=0))
    return b"".join(parts)


# --- signing keys ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Signer:
    """A throw-away CA and a signing certificate it issued (files under one directory).

    The device trusts `ca_cert` (`swupdate -k`); bundles are signed with `cert` + `key`.
    """

    ca_cert: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({done.returncode}): {done.stderr.strip()}")


def make_signer(directory: Path, name: str) -> Signer:
    """A CA named `name` and a code-signing certificate issued by it, in `directory`.

    The signing certificate has `extendedKeyUsage = emailProtection`: SWUpdate checks the
    signer's purpose and expects that one unless started with `--cert-purpose codeSigning`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "signer.key", directory / "signer.csr", directory / "signer.pem"
    ext = directory / "signer.ext"
    ext.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = emailProtection\n"
    )
    # fmt: off
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca_cert), "-days", "30",
             "-subj", f"/CN={name} CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign", cwd=directory)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name} signer", cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "30", "-extfile", str(ext),
             cwd=directory)
    # fmt: on
    return Signer(ca_cert=ca_cert, cert=cert, key=key)


def sign(description: bytes, signer: Signer, directory: Path) -> bytes:
    """sw-description.sig: a detached CMS signature in DER, as SWUpdate's docs make it."""
    source, signature = directory / "sw-description", directory / "sw-description.sig"
    source.write_bytes(description)
    # fmt: off
    _openssl("cms", "-sign", "-in", str(source), "-out", str(signature),
             "-signer", str(signer.cert), "-inkey", str(signer.key),
             "-outform", "DER", "-nosmimecap", "-binary", cwd=directory)
    # fmt: on
    return signature.read_bytes()


# --- bundles --------------------------------------------------------------------------------


def _string(value: str) -> str:
    """A libconfig string literal (its escapes are C's; JSON's are a subset of them)."""
    return json.dumps(value)


def sw_description(
    *, version: str, image_name: str, image_sha256: str, device: Path, hardware: Sequence[str]
) -> bytes:
    """A sw-description (libconfig syntax) with one raw image written to `device`.

    SWUpdate 2022.12 as Debian builds it (signed images) refuses an image without
    `sha256`; `hardware-compatibility` lists the revisions (`-H board:<revision>`) the
    bundle may be installed on.
    """
    revisions = ", ".join(_string(r) for r in hardware)
    return (
        "software =\n"
        "{\n"
        f"    version = {_string(version)};\n"
        f"    hardware-compatibility = [ {revisions} ];\n"
        "    images: (\n"
        "        {\n"
        f"            filename = {_string(image_name)};\n"
        f"            device = {_string(str(device))};\n"
        '            type = "raw";\n'
        f"            sha256 = {_string(image_sha256)};\n"
        "        }\n"
        "    );\n"
        "}\n"
    ).encode()


@attrs.frozen(kw_only=True)
class Bundles:
    """Builds `.swu` files into `directory` for a device whose raw target is `device`.

    `trusted` is the signer the device's `-k` certificate belongs to; `foreign` one it
    does not know. Every builder returns the path of the written bundle.
    """

    directory: Path
    device: Path
    trusted: Signer
    foreign: Signer
    image_name: str = "rootfs.img"

    @classmethod
    def create(cls, directory: Path, device: Path) -> Bundles:
        keys = directory / "keys"
        return cls(
            directory=directory,
            device=device,
            trusted=make_signer(keys / "trusted", "upparat test"),
            foreign=make_signer(keys / "foreign", "somebody else"),
        )

    def build(
        self,
        name: str,
        *,
        version: str,
        image: bytes,
        signer: Signer | None = None,
        hardware: Sequence[str] = (HARDWARE_REVISION,),
        shipped_image: bytes | None = None,
    ) -> Path:
        """A bundle whose sw-description describes `image`, signed by `signer` (default:
        trusted). `shipped_image`: other bytes packed in its place after signing (the
        archive's own checksum matches them: only the signed sha256 can notice)."""
        work = self.directory / f"{name}.d"
        work.mkdir(parents=True, exist_ok=True)
        description = sw_description(
            version=version,
            image_name=self.image_name,
            image_sha256=hashlib.sha256(image).hexdigest(),
            device=self.device,
            hardware=hardware,
        )
        signature = sign(description, signer or self.trusted, work)
        payload = image if shipped_image is None else shipped_image
        path = self.directory / name
        path.write_bytes(
            cpio_crc(
                [
                    ("sw-description", description),
                    ("sw-description.sig", signature),
                    (self.image_name, payload),
                ]
            )
        )
        return path

    def good(self, name: str, *, version: str, image: bytes) -> Path:
        return self.build(name, version=version, image=image)

    def foreign_signed(self, name: str, *, version: str, image: bytes) -> Path:
        return self.build(name, version=version, image=image, signer=self.foreign)

    def tampered(self, name: str, *, version: str, image: bytes) -> Path:
        """Signed for `image`, but the image in the archive has its first byte changed."""
        changed = bytes([image[0] ^ 0xFF]) + image[1:]
        return self.build(name, version=version, image=image, shipped_image=changed)

    def wrong_hardware(self, name: str, *, version: str, image: bytes, revision: str) -> Path:
        """Properly signed, but only for hardware revision `revision`."""
        return self.build(name, version=version, image=image, hardware=(revision,))
