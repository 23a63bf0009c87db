"""SWUpdate without the whole stack: the `.swu` writer (read back byte by byte, then checked
by the real `swupdate -c`) and the example install hook's verdict on swupdate's output.

The verdict tests replay what Debian's swupdate 2022.12 printed here, through a stand-in
`swupdate` on PATH: its exit status races (exit 1 after "SWUPDATE successful", exit 1
with no verdict at all) cannot be triggered on demand with the real one. The real one
runs in tests/e2e/test_swupdate.py.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from upparat.devstack.swupdate import CPIO_TRAILER, Bundles, cpio_crc

INSTALL = Path(__file__).resolve().parents[1] / "examples" / "hooks" / "swupdate" / "install.sh"
VERSION = INSTALL.with_name("version.sh")


# --- the cpio writer ----------------------------------------------------------------------


def read_cpio(archive: bytes) -> list[tuple[str, dict[str, int], bytes]]:
    """(name, header fields, data) per member, checking magic, padding and checksum."""
    names: tuple[str, ...] = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize")
    names += ("devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")
    members = []
    offset = 0
    while True:
        assert archive[offset : offset + 6] == b"070702", offset
        raw = archive[offset + 6 : offset + 110]
        fields = {n: int(raw[i * 8 : i * 8 + 8], 16) for i, n in enumerate(names)}
        name_end = offset + 110 + fields["namesize"]
        assert archive[name_end - 1] == 0  # the name's NUL
        name = archive[offset + 110 : name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        assert archive[name_end:data_start] == bytes(data_start - name_end)
        data = archive[data_start : data_start + fields["filesize"]]
        assert fields["check"] == sum(data) & 0xFFFFFFFF
        members.append((name, fields, data))
        offset = data_start + fields["filesize"]
        offset += -offset % 4
        if name == CPIO_TRAILER:
            assert offset == len(archive)
            return members


def test_cpio_crc_members_are_padded_and_checksummed() -> None:
    # Odd lengths on purpose: names and data both need padding to 4 bytes.
    members = [("a", b"x"), ("sw-description.sig", b"\xff" * 5), ("img", b"")]
    parsed = read_cpio(cpio_crc(members))
    assert [(name, data) for name, _, data in parsed] == [*members, (CPIO_TRAILER, b"")]
    assert parsed[1][1]["check"] == 5 * 0xFF
    assert [fields["nlink"] for _, fields, _ in parsed] == [1, 1, 1, 1]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short private TMPDIR for swupdate (its unix sockets live there)."""
    path = Path(tempfile.mkdtemp(prefix="swu-", dir="/tmp"))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)


def test_swupdate_checks_the_bundle_and_its_signature(tmp_path: Path, scratch: Path) -> None:
    device = tmp_path / "slot.img"
    device.write_bytes(bytes(4096))
    bundles = Bundles.create(tmp_path / "swu", device)
    image = b"rootfs 2.0.0\n" + os.urandom(3001)
    bundle = bundles.good("good.swu", version="2.0.0", image=image)

    order = [name for name, _, _ in read_cpio(bundle.read_bytes())]
    assert order == ["sw-description", "sw-description.sig", "rootfs.img", CPIO_TRAILER]
    description = read_cpio(bundle.read_bytes())[0][2].decode()
    assert f'sha256 = "{hashlib.sha256(image).hexdigest()}";' in description
    assert 'hardware-compatibility = [ "1.0" ];' in description

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        # -c: parse, verify the signature and hashes, install nothing.
        config = tmp_path / "swupdate.cfg"
        config.write_text("globals :\n{\n};\n")
        argv = ["swupdate", "-l", "1", "-f", str(config), "-B", "none", "-c", "-i", str(path)]
        argv += ["-k", str(bundles.trusted.ca_cert), "-H", "board:1.0"]
        env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(scratch)}
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    good = check(bundle)
    assert "ERROR" not in good.stdout + good.stderr, good
    foreign = check(bundles.foreign_signed("foreign.swu", version="2.0.0", image=image))
    assert "Authentication of all signatures failed" in foreign.stderr, foreign
    assert device.read_bytes() == bytes(4096)


# --- the install hook's verdict -------------------------------------------------------------

# What swupdate 2022.12 printed (stdout, then the lines it wrote to stderr).
STARTED = "[INFO ] : SWUPDATE started :  Software Update started !"
SUCCESS = [
    "SWUpdate v",
    "",
    STARTED,
    "[INFO ] : SWUPDATE running :  Installation in progress",
    "[INFO ] : SWUPDATE successful ! SWUPDATE successful !",
    "[INFO ] : No SWUPDATE running :  Waiting for requests...",
]
FOREIGN_ERRORS = [
    "[ERROR] : SWUPDATE failed [0] ERROR : Authentication of all signatures failed",
    "[ERROR] : SWUPDATE failed [0] ERROR : Compatible SW not found",
    "[ERROR] : SWUPDATE failed [1] Image invalid or corrupted. Not installing ...",
]


def run_hook(
    tmp_path: Path,
    *,
    stdout: Sequence[str],
    stderr: Sequence[str] = (),
    status: int,
    retries: int = 0,
) -> tuple[int, list[str], str, list[str]]:
    """Run install.sh with a stand-in swupdate; (exit status, stdout lines, stderr, argv)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "swupdate-argv"
    lines_out = "".join(f"printf '%s\\n' {shlex.quote(line)}\n" for line in stdout)
    lines_err = "".join(f"printf '%s\\n' {shlex.quote(line)} >&2\n" for line in stderr)
    fake = bin_dir / "swupdate"
    fake.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "TMPDIR=$TMPDIR" "$@" > {shlex.quote(str(record))}\n'
        f"{lines_out}{lines_err}exit {status}\n"
    )
    fake.chmod(0o755)
    parent = tmp_path / "tmp"
    parent.mkdir(exist_ok=True)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TMPDIR": str(parent),
        "SWUPDATE_CERT": "/keys/ca.pem",
        "SWUPDATE_HWREVISION": "board:1.0",
        "SWUPDATE_ARGS": "-B none -e stable,b",
    }
    done = subprocess.run(
        ["sh", str(INSTALL), "0", str(retries), "", "/downloads/upparat_fw"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert list(parent.iterdir()) == [], "the hook left its scratch directory behind"
    argv = record.read_text().splitlines() if record.exists() else []
    return done.returncode, done.stdout.splitlines(), done.stderr, argv


def test_success_runs_swupdate_with_the_settings_and_a_private_tmpdir(tmp_path: Path) -> None:
    status, out, err, argv = run_hook(tmp_path, stdout=SUCCESS, status=0)
    assert status == 0, err
    assert argv[0].startswith(f"TMPDIR={tmp_path / 'tmp'}/upparat-swupdate.")
    assert argv[1:] == [
        "-l",
        "1",
        "-i",
        "/downloads/upparat_fw",
        "-k",
        "/keys/ca.pem",
        "-H",
        "board:1.0",
        "-B",
        "none",
        "-e",
        "stable,b",
    ]
    # SWUpdate's messages are the progress lines, without the log-level prefix.
    assert out == [
        "SWUPDATE started :  Software Update started !",
        "SWUPDATE running :  Installation in progress",
        "SWUPDATE successful ! SWUPDATE successful !",
        "No SWUPDATE running :  Waiting for requests...",
        "swupdate installed upparat_fw",
    ]
    assert "SWUpdate v" in err  # the banner is no progress


def test_exit_1_after_swupdate_reported_success_is_a_success(tmp_path: Path) -> None:
    # Seen in about 1 of 6 runs of swupdate 2022.12 -i: every image written, then exit 1.
    status, out, _, _ = run_hook(tmp_path, stdout=SUCCESS, status=1)
    assert status == 0
    assert out[-2:] == [
        "swupdate exited with status 1 after reporting success (ignored)",
        "swupdate installed upparat_fw",
    ]


def test_the_first_error_is_the_reason_whatever_the_exit_status(tmp_path: Path) -> None:
    for exit_status in (1, 0):
        status, out, err, _ = run_hook(
            tmp_path, stdout=[STARTED], stderr=FOREIGN_ERRORS, status=exit_status
        )
        assert status == 1
        assert out[-1] == "swupdate failed: Authentication of all signatures failed"
        assert err.splitlines()[-3:] == FOREIGN_ERRORS  # the detail: SWUpdate's own lines


def test_an_error_beside_a_success_line_is_a_failure(tmp_path: Path) -> None:
    stderr = [
        "[ERROR] : SWUPDATE failed [0] ERROR : Cannot persistently store INSTALLED update state."
    ]
    status, out, _, _ = run_hook(tmp_path, stdout=SUCCESS, stderr=stderr, status=0)
    assert status == 1
    assert out[-1] == "swupdate failed: Cannot persistently store INSTALLED update state."


def test_no_verdict_installs_again_twice_then_fails(tmp_path: Path) -> None:
    # swupdate 2022.12 -i can end before its installer has said anything (its client
    # reads the status before the installer starts), with exit status 1.
    for retries, expected in ((0, 3), (1, 3), (2, 1)):
        status, out, _, _ = run_hook(tmp_path, stdout=[STARTED], status=1, retries=retries)
        assert status == expected, (retries, out)
    assert out[-1] == "swupdate exited with status 1 without reporting success"


def test_exit_0_without_the_success_line_is_no_success(tmp_path: Path) -> None:
    status, out, _, _ = run_hook(tmp_path, stdout=[STARTED], status=0)
    assert status == 1
    assert out[-1] == "swupdate exited with status 0 without reporting success"


# --- the version hook -----------------------------------------------------------------------


def run_version(versions: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "SWUPDATE_VERSIONS": str(versions)}
    return subprocess.run(
        ["sh", str(VERSION), "0", "0", ""], capture_output=True, text=True, env=env, timeout=30
    )


def test_version_is_the_rootfs_line_of_sw_versions(tmp_path: Path) -> None:
    versions = tmp_path / "sw-versions"
    versions.write_text("bootloader 2022.04\nrootfs 2.4.0\n")
    done = run_version(versions)
    assert (done.returncode, done.stdout) == (0, "2.4.0\n")

    versions.write_text("bootloader 2022.04\n")
    done = run_version(versions)
    assert done.returncode == 1
    assert f"no 'rootfs' line in {versions}" in done.stderr
    missing = run_version(tmp_path / "absent")
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr
