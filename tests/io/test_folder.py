"""The download folder: refused when another user controls it or the hook server cannot
see it (the shipped unit's PrivateTmp=yes), in-process and on the real command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from upparat.io.folder import (
    FolderRefused,
    folder_problem,
    prepare_download_folder,
    private_temp_trap,
    shared_temp_warning,
)

UPPARAT = Path(sys.executable).with_name("upparat")


def test_a_missing_folder_is_created_private(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "upparat"
    prepare_download_folder(folder)
    assert folder.is_dir()
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_planted_symlink_is_refused_and_left_alone(tmp_path: Path) -> None:
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "upparat_1").write_text("evil")
    folder = tmp_path / "upparat"
    folder.symlink_to(elsewhere)
    with pytest.raises(FolderRefused, match=r"is a symlink \(to .*attacker\)"):
        prepare_download_folder(folder)
    assert folder.is_symlink()
    assert (elsewhere / "upparat_1").read_text() == "evil"  # nothing followed, nothing deleted


def test_a_file_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "upparat").write_text("")
    with pytest.raises(FolderRefused, match="is not a directory"):
        prepare_download_folder(tmp_path / "upparat")


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o777])
def test_a_folder_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "upparat"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(FolderRefused, match=f"mode {mode:04o}.*chmod 0700"):
        prepare_download_folder(folder)


def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "upparat"
    folder.mkdir(mode=0o700)
    with pytest.raises(FolderRefused, match=f"belongs to uid {os.geteuid()}, not"):
        prepare_download_folder(folder, uid=os.geteuid() + 1)
    # check-config cannot know the daemon's user: it skips the owner, not the rest.
    assert folder_problem(folder, uid=None) is None


def test_a_parent_others_may_rename_in_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(FolderRefused, match="without the sticky bit"):
        prepare_download_folder(parent / "upparat")
    parent.chmod(0o1777)  # like /tmp: others cannot rename our folder
    prepare_download_folder(parent / "upparat")


MOUNTINFO_PRIVATE = [
    "24 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
    "66 24 254:0 /tmp/systemd-private-0a1b-upparat.service-Xy/tmp /tmp rw - ext4 /dev/vda rw",
]
MOUNTINFO_PLAIN = [
    "24 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
    "30 24 0:27 / /tmp rw,nosuid,nodev shared:5 - tmpfs tmpfs rw",
]


def test_the_private_tmp_trap_is_named_with_the_fix() -> None:
    problem = private_temp_trap(Path("/tmp"), MOUNTINFO_PRIVATE)
    assert problem is not None
    assert "PrivateTmp=yes" in problem
    assert "download_location = /var/cache/upparat" in problem
    assert private_temp_trap(Path("/tmp/x/y"), MOUNTINFO_PRIVATE) is not None
    assert private_temp_trap(Path("/tmp"), MOUNTINFO_PLAIN) is None
    assert private_temp_trap(Path("/var/cache/upparat"), MOUNTINFO_PRIVATE) is None
    assert private_temp_trap(Path("/tmpfoo"), MOUNTINFO_PRIVATE) is None


def test_check_config_warns_about_shared_temp_directories() -> None:
    warning = shared_temp_warning(Path("/var/tmp/dl"))
    assert warning is not None
    assert "/var/cache/upparat" in warning
    assert shared_temp_warning(Path("/var/cache/upparat")) is None


# --- the real command line ------------------------------------------------------------


def _config(tmp_path: Path, location: Path) -> Path:
    path = tmp_path / "upparat.conf"
    path.write_text(
        f"[service]\nstate_dir = {tmp_path / 'state'}\ndownload_location = {location}\n"
        "[broker]\nthing_name = folder-test\nport = 1\n"
    )
    return path


def _run(*argv: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_daemon_and_check_config_refuse_a_planted_symlink(tmp_path: Path) -> None:
    location = tmp_path / "cache"
    location.mkdir(mode=0o700)
    (location / "upparat").symlink_to(tmp_path)
    config = _config(tmp_path, location)
    runs: list[list[str | Path]] = [
        [UPPARAT, "-c", config],
        [UPPARAT, "check-config", "-c", config],
    ]
    for argv in runs:
        done = _run(*argv)
        assert done.returncode == 2, done
        assert "is a symlink" in done.stderr
        assert "Traceback" not in done.stderr
    assert (location / "upparat").is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_the_daemon_refuses_a_download_folder_in_a_private_tmp(tmp_path: Path) -> None:
    """What PrivateTmp=yes does, in a mount namespace of the test's own: /var/tmp is bound
    to a systemd-private directory. The daemon must not start."""
    private = tmp_path / "systemd-private-0a1b2c-upparat.service-XyZ" / "tmp"
    private.mkdir(parents=True)
    config = _config(tmp_path, Path("/var/tmp/upparat-test"))
    script = 'mount --bind "$1" /var/tmp && exec "$2" -c "$3"'
    done = _run(
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", script, "sh", private, UPPARAT, config,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert "PrivateTmp=yes" in done.stderr
    assert "download_location = /var/cache/upparat" in done.stderr
    assert not (Path("/var/tmp") / "upparat-test").exists()  # the host's /var/tmp untouched


def test_check_config_names_the_private_tmp_fix(tmp_path: Path) -> None:
    assert tmp_path.is_relative_to("/tmp")  # pytest's base temp
    done = _run(UPPARAT, "check-config", "-c", _config(tmp_path, tmp_path))
    # The hook server is not running (exit 3), but the folder note comes first.
    assert f"warning: download_location {tmp_path} is under /tmp" in done.stdout
    assert "PrivateTmp=yes" in done.stdout
