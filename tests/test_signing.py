"""upparat.signing against the real openssl: keys it makes load, signatures it makes verify,
and everything else is refused with the file named."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
from pathlib import Path

import pytest

from tests.support.keys import SigningKey, make_key
from upparat import signing


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return make_key(tmp_path / "keys", "release")


@pytest.fixture
def firmware(tmp_path: Path) -> Path:
    path = tmp_path / "fw.raucb"
    path.write_bytes(bytes(range(256)) * 4099)
    return path


def digest(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def test_an_openssl_signature_verifies_with_the_public_key(key: SigningKey, firmware: Path) -> None:
    keys = signing.load_trusted_keys(key.public)

    result = keys.verify(digest(firmware), key.sign(firmware))

    assert isinstance(result, signing.Verified)
    assert result.key.source == str(key.public)


def test_an_openssl_signature_verifies_with_a_certificate_of_the_key(
    key: SigningKey, firmware: Path
) -> None:
    keys = signing.load_trusted_keys(key.certificate())

    assert isinstance(keys.verify(digest(firmware), key.sign(firmware)), signing.Verified)


def test_the_fingerprint_is_the_sha256_of_the_der_public_key(key: SigningKey) -> None:
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(key.public), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout

    (loaded,) = signing.load_trusted_keys(key.public).keys

    assert loaded.fingerprint == hashlib.sha256(der).hexdigest()


def test_trusted_keys_cross_to_the_download_worker_as_they_were_loaded(
    key: SigningKey, firmware: Path
) -> None:
    # The download worker (upparat.io.download_worker) gets the daemon's keys through a
    # pipe, pickled; cryptography's key objects do not pickle themselves.
    keys = signing.load_trusted_keys(key.certificate())
    crossed = pickle.loads(pickle.dumps(keys))
    assert crossed == keys
    assert crossed.keys[0].fingerprint == keys.keys[0].fingerprint
    result = crossed.verify(digest(firmware), key.sign(firmware))
    assert isinstance(result, signing.Verified)
    assert result.key.source == str(key.certificate())


def test_a_signature_made_here_verifies_with_openssl(
    key: SigningKey, firmware: Path, tmp_path: Path
) -> None:
    sig = tmp_path / "sig.der"
    private = signing.load_private_key(key.private.read_bytes())
    sig.write_bytes(signing.sign_digest(private, digest(firmware)))

    verify = ["openssl", "dgst", "-sha256", "-verify", str(key.public), "-signature", str(sig)]
    done = subprocess.run(
        [*verify, str(firmware)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "Verified OK" in done.stdout


def test_another_key_does_not_verify(key: SigningKey, firmware: Path, tmp_path: Path) -> None:
    other = make_key(tmp_path / "other", "other")
    keys = signing.load_trusted_keys(key.public)

    result = keys.verify(digest(firmware), other.sign(firmware))

    assert isinstance(result, signing.NotVerified)
    assert "does not verify" in result.reason
    assert str(key.public) in result.reason


def test_a_tampered_digest_does_not_verify(key: SigningKey, firmware: Path) -> None:
    keys = signing.load_trusted_keys(key.public)
    signature = key.sign(firmware)
    tampered = bytearray(digest(firmware))
    tampered[0] ^= 1

    assert isinstance(keys.verify(bytes(tampered), signature), signing.NotVerified)


@pytest.mark.parametrize("garbage", [b"", b"garbage", b"\x30\x06\x02\x01\x01\x02\x01", bytes(72)])
def test_garbage_is_not_a_signature(key: SigningKey, firmware: Path, garbage: bytes) -> None:
    keys = signing.load_trusted_keys(key.public)

    result = keys.verify(digest(firmware), garbage)

    assert isinstance(result, signing.NotVerified)
    assert result.reason.startswith("signature: ")


def test_a_digest_of_the_wrong_length_is_a_bug(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        signing.load_trusted_keys(key.public).verify(b"short", b"sig")


def test_a_directory_holds_several_keys_and_any_of_them_verifies(
    tmp_path: Path, firmware: Path
) -> None:
    folder = tmp_path / "trusted"
    old, new = make_key(folder, "2024"), make_key(folder, "2025")
    (folder / "README").write_text("not a key, not read\n")
    for private in (old.private, new.private):  # *.key files are not read either
        private.rename(tmp_path / private.name)
    new = SigningKey(private=tmp_path / new.private.name, public=new.public)

    keys = signing.load_trusted_keys(folder)

    assert [k.source for k in keys.keys] == [str(old.public), str(new.public)]
    assert isinstance(keys.verify(digest(firmware), new.sign(firmware)), signing.Verified)


def test_a_file_with_several_pem_blocks_gives_one_key_each(tmp_path: Path) -> None:
    a, b = make_key(tmp_path, "a"), make_key(tmp_path, "b")
    both = tmp_path / "both.pem"
    both.write_bytes(a.public.read_bytes() + b.certificate().read_bytes())

    keys = signing.load_trusted_keys(both)

    assert [k.source for k in keys.keys] == [f"{both}#1", f"{both}#2"]


def _openssl_key(tmp_path: Path, name: str, *args: str) -> Path:
    private, public = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(["openssl", *args, "-out", str(private)], capture_output=True, check=True)
    subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)],
        capture_output=True,
        check=True,
    )
    return public


@pytest.mark.parametrize(
    ("name", "args", "problem"),
    [
        ("rsa", ("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"), "an RSA key"),
        ("ed", ("genpkey", "-algorithm", "ed25519"), "an Ed25519 key"),
        ("p384", ("ecparam", "-name", "secp384r1", "-genkey", "-noout"), "secp384r1"),
    ],
)
def test_keys_other_than_p256_are_refused_naming_the_file(
    tmp_path: Path, name: str, args: tuple[str, ...], problem: str
) -> None:
    public = _openssl_key(tmp_path, name, *args)

    with pytest.raises(signing.UnusableKeys) as err:
        signing.load_trusted_keys(public)

    assert str(public) in str(err.value)
    assert problem in str(err.value)
    assert "P-256" in str(err.value)


def test_a_private_key_is_refused(key: SigningKey) -> None:
    with pytest.raises(signing.UnusableKeys, match="private key") as err:
        signing.load_trusted_keys(key.private)
    assert "-pubout" in str(err.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "no PEM block"),
        (b"hello\n", "no PEM block"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a valid PUBLIC KEY"),
        (b"-----BEGIN DH PARAMETERS-----\nAAAA\n-----END DH PARAMETERS-----\n", "DH PARAMETERS"),
    ],
)
def test_files_that_hold_no_usable_key_are_refused(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "keys.pem"
    path.write_bytes(content)

    with pytest.raises(signing.UnusableKeys, match=problem) as err:
        signing.load_trusted_keys(path)
    assert str(path) in str(err.value)


def test_a_missing_path_and_an_empty_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(signing.UnusableKeys, match="no such file"):
        signing.load_trusted_keys(tmp_path / "nope.pem")
    (tmp_path / "empty").mkdir()
    with pytest.raises(signing.UnusableKeys, match=r"no \*\.pem file"):
        signing.load_trusted_keys(tmp_path / "empty")


def test_one_bad_file_in_a_directory_refuses_the_directory(tmp_path: Path, key: SigningKey) -> None:
    folder = key.public.parent
    key.private.unlink()
    (folder / "broken.pem").write_text("not a key\n")

    with pytest.raises(signing.UnusableKeys, match=r"broken\.pem"):
        signing.load_trusted_keys(folder)


def test_a_process_without_trusted_keys_never_loads_cryptography() -> None:
    # cryptography costs ~10 MB of RSS: the daemon's and the hook server's modules load it
    # only when a key is read or a signature checked.
    import subprocess
    import sys

    code = (
        "import sys, upparat.daemon, upparat.io.download, upparat.config,"
        " hookservers.shell.server, hookservers.shell.verify;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout
