"""upparat-hookserver (hookservers/shell) as a real subprocess on a unix socket.

The shared contract cases run against it here; the cases after them cover what only this
implementation promises: its config keys and --help, TCP listening, percent parsing,
killing what a script leaves behind, bounded output and the exact script environment.
"""

from __future__ import annotations

import configparser
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from hookservers.shell import config as cfg
from hookservers.shell.scripts import Exited, NotStarted, ScriptOutcome, Signalled
from hookservers.shell.server import hook_result, percent_of
from tests.hooks.contract_cases import (
    EVAL_SCRIPT,
    GRACE,
    REPO_ROOT,
    SECRET_ENV,
    SHELL,
    HookServerContract,
    HookServerFactory,
    Implementation,
    RunningHookServer,
    call,
    health_status,
    job,
    rpc_code,
    wait_for_file,
    wait_gone,
)
from tests.support.keys import make_key
from upparat.devstack.rauc import RaucDevice
from upparat.hooks.v1 import hooks_pb2, hooks_pb2_grpc


class TestShellHookServer(HookServerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def implementation(cls) -> Implementation:
        return SHELL

    # -- beyond the contract -------------------------------------------------------------

    def test_the_script_environment_is_exactly_the_documented_one(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        out = tmp_path / "env"
        call(eval_server, "install", f"env > {out}.tmp; mv {out}.tmp {out}")

        names = {line.split("=", 1)[0] for line in wait_for_file(out).splitlines()}

        documented = {
            "PATH",
            "LANG",
            "HOME",
            "UPPARAT_HOOK",
            "UPPARAT_JOB_ID",
            "UPPARAT_ATTEMPT",
            "UPPARAT_FORCE",
            "UPPARAT_META",
            "UPPARAT_ELAPSED",
            "UPPARAT_FILE",
        }
        assert names - {"PWD"} == documented  # /bin/sh adds PWD itself

    def test_configured_variables_reach_the_script_and_nothing_else_does(
        self, hook_server: HookServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        out = tmp_path / "env"
        monkeypatch.setenv("HOOKTEST_PASSED", "from the server")  # the server inherits it
        server = hook_server.start(
            {"version": f"env > {out}.tmp; mv {out}.tmp {out}; echo 1.0"},
            options={
                "environment": "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/x/bus GREETING='a b'",
                "pass_environment": "HOOKTEST_PASSED NOT_SET_ANYWHERE",
            },
        )
        call(server, "version")

        env = dict(line.split("=", 1) for line in wait_for_file(out).splitlines())

        assert env["DBUS_SYSTEM_BUS_ADDRESS"] == "unix:path=/x/bus"
        assert env["GREETING"] == "a b"
        assert env["HOOKTEST_PASSED"] == "from the server"  # passed on because it was named
        assert SECRET_ENV not in env  # set in the server's environment, not named
        assert "NOT_SET_ANYWHERE" not in env
        assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def test_scripts_run_in_the_root_directory(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        out = tmp_path / "cwd"
        call(eval_server, "ready", f"pwd > {out}.tmp; mv {out}.tmp {out}")

        assert wait_for_file(out) == "/\n"

    def test_processes_left_behind_by_a_finished_script_are_killed(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        pidfile = tmp_path / "pid"

        answer = call(
            eval_server,
            "restart",
            f"sleep 1000 >/dev/null 2>&1 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; "
            "echo restarting",
        )

        assert answer.result.outcome == hooks_pb2.OUTCOME_SUCCESS
        assert answer.result.message == "restarting"
        assert wait_gone([int(wait_for_file(pidfile))], GRACE + 1) == []
        assert "1 leftover process(es) killed" in eval_server.log()

    def test_huge_output_is_bounded(self, eval_server: RunningHookServer) -> None:
        answer = call(
            eval_server,
            "install",
            """
            head -c 3000000 /dev/zero | tr '\\0' a
            echo
            head -c 3000000 /dev/zero | tr '\\0' e >&2
            echo "last line"
            exit 1
            """,
        )

        assert answer.result.reason == "HOOK_EXIT_NONZERO"
        assert answer.result.message.endswith(": last line")
        assert len(answer.result.detail) == 1024
        assert all(len(p.line) <= 1024 for p in answer.progress)

    def test_install_progress_reports_percent(self, eval_server: RunningHookServer) -> None:
        answer = call(eval_server, "install", "echo ' 40% Copying image'; sleep 0.3; echo done")

        assert [(p.line, p.HasField("percent"), p.percent) for p in answer.progress] == [
            ("40% Copying image", True, 40),
            ("done", False, 0),
        ]

    def test_fast_progress_is_merged_and_the_last_line_arrives(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(
            eval_server, "install", "i=0; while [ $i -lt 500 ]; do echo $i; i=$((i+1)); done"
        )

        numbers = [int(p.line) for p in answer.progress]
        assert numbers == sorted(numbers)  # merged (older lines dropped), never reordered
        assert numbers[-1] == 499
        lines = numbers
        assert len(lines) < 100
        assert answer.result.message == "499"

    def test_one_log_line_per_call(self, eval_server: RunningHookServer) -> None:
        call(eval_server, "ready", "exit 3", job_id="upparat_logged", attempt=4)

        deadline = time.monotonic() + 5
        while "upparat_logged" not in eval_server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = [ln for ln in eval_server.log().splitlines() if "upparat_logged" in ln]
        assert len(lines) == 1
        assert "ready job=upparat_logged attempt=4: RETRY_LATER (exit status 3) in " in lines[0]

    def test_a_nul_in_the_meta_is_an_invalid_argument(self, eval_server: RunningHookServer) -> None:
        with pytest.raises(grpc.RpcError) as err:
            call(eval_server, "ready", "echo \0")

        assert rpc_code(err.value) == grpc.StatusCode.INVALID_ARGUMENT

    def test_listens_on_tcp_loopback_for_a_bare_port(self, hook_server: HookServerFactory) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        conf = hook_server.write_config(
            {"version": EVAL_SCRIPT},
            socket_path=hook_server.socket_path(),
            options={"listen": f":{port}"},
        )
        hook_server.spawn(conf)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    health_status(channel)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            stub = hooks_pb2_grpc.HookServiceStub(channel)
            reply = stub.GetVersion(
                hooks_pb2.GetVersionRequest(context=job(meta="echo 7.0")), timeout=10
            )
        finally:
            channel.close()

        assert reply.version == "7.0"
        # Loopback is no access control: every local user could have root install.
        log = (hook_server.workdir / f"{conf.stem}.log").read_text()
        assert "TCP has no access control; every process on this machine" in log
        assert "use a unix socket" in log

    def test_the_example_hooks_run_an_update_on_a_real_rauc_device(
        self, hook_server: HookServerFactory, tmp_path: Path
    ) -> None:
        with RaucDevice(tmp_path / "rauc", version="1.0.0") as device:
            device.start()
            bundle = device.make_bundle("2.0.0")
            server = hook_server.start(dict(device.hooks()), options=device.hookserver_options())
            flags = device.run_dir

            assert call(server, "version").version == "1.0.0"
            (flags / "metered").touch()
            metered = call(server, "download")
            assert metered.result.outcome == hooks_pb2.OUTCOME_RETRY_LATER
            assert metered.result.retry_after.seconds == 300
            (flags / "metered").unlink()
            assert call(server, "download").result.outcome == hooks_pb2.OUTCOME_SUCCESS
            installed = server.install(
                request=server.install_request(content=bundle.path.read_bytes())
            )
            assert installed.result is not None
            assert installed.result.outcome == hooks_pb2.OUTCOME_SUCCESS, installed.result
            # RAUC's own lines (at most one each 0.2 s: the newest wins, so a quick install
            # shows few of them).
            lines = [p.line for p in installed.progress]
            assert lines[0] == "installing", lines
            # RAUC installs the file the hook server checked (taken over into its state_dir),
            # not the download by its own path.
            assert lines[-1].startswith("Installing `"), lines
            assert lines[-1].endswith("` succeeded"), lines
            assert str(server.download_dir) not in lines[-1], lines
            assert device.slot_holds("B", bundle.image)
            # Restart does not return: it waits for the reboot to stop it.
            with pytest.raises(grpc.RpcError) as waited:
                call(server, "restart", timeout=3)
            assert rpc_code(waited.value) == grpc.StatusCode.DEADLINE_EXCEEDED
            assert device.reboot_requested
            assert device.reboot() == "B"
            assert call(server, "version").version == "2.0.0"
            device.system_state = "starting"
            assert call(server, "ready").result.outcome == hooks_pb2.OUTCOME_RETRY_LATER
            device.system_state = "degraded"
            degraded = call(server, "ready")
            assert degraded.result.outcome == hooks_pb2.OUTCOME_FAILURE
            assert degraded.result.message.endswith("system is degraded")
            device.system_state = "running"
            ready = call(server, "ready")
            assert ready.result.outcome == hooks_pb2.OUTCOME_SUCCESS
            assert ready.result.message == "rauc status: marked slot rootfs.1 as good"
            assert device.slot_status("B")["boot_status"] == "good"

    def test_an_example_install_of_a_broken_bundle_fails_with_raucs_complaint(
        self, hook_server: HookServerFactory, tmp_path: Path
    ) -> None:
        not_a_bundle = tmp_path / "firmware.raucb"
        not_a_bundle.write_bytes(b"version=2.0.0\n" * 1000)
        with RaucDevice(tmp_path / "rauc") as device:
            device.start()
            server = hook_server.start(
                {"install": device.hooks()["install"]}, options=device.hookserver_options()
            )

            failed = server.install(
                request=server.install_request(content=not_a_bundle.read_bytes())
            )

        assert failed.result is not None
        assert failed.result.reason == "HOOK_EXIT_NONZERO"
        # RAUC's reason, last even when rauc prints "idle" after it.
        assert "exited with status 1: LastError: Invalid bundle format" in failed.result.message, (
            failed.result.message
        )
        assert "` failed" in failed.result.detail, failed.result.detail

    @pytest.mark.parametrize(
        ("section", "expected"),
        [
            ("[hookserver]\nlistne = unix:///tmp/x.sock\n", 'unknown key "listne"'),
            ("[hookserver]\nsocket_mode = 0666\n", "socket_mode"),
            ("[hookserver]\ncancel_grace_period = soon\n", "cancel_grace_period"),
        ],
    )
    def test_bad_hookserver_config_exits_2_naming_the_key(
        self, hook_server: HookServerFactory, section: str, expected: str
    ) -> None:
        conf = hook_server.write_config({}, socket_path=hook_server.socket_path())
        conf.write_text(conf.read_text().replace("[hookserver]\n", section))

        code, output = hook_server.run_to_exit(conf)

        assert code == 2
        assert expected in output


# --- the command line and the config, without a server ------------------------------------


def test_help_documents_every_config_key_with_its_default() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hookservers.shell.main", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )

    for key, (default, _) in cfg.OPTIONS.items():
        assert f"[hookserver] {key} (default {default})" in done.stdout
    for hook in cfg.HOOKS:
        assert hook in done.stdout
    assert "--listen" in done.stdout


def test_check_exits_0_for_a_usable_config_without_listening(tmp_path: Path) -> None:
    sock = tmp_path / "never.sock"
    conf = tmp_path / "upparat.conf"
    conf.write_text(f"[hooks]\nendpoint = unix://{sock}\nversion = {EVAL_SCRIPT}\n")

    done = subprocess.run(
        [sys.executable, "-m", "hookservers.shell.main", "-c", str(conf), "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert not sock.exists()


def parse(text: str, **overrides: str) -> cfg.ServerConfig:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return cfg.parse(parser, **overrides)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = parse("[service]\nlog_level = DEBUG\n")

    assert config == cfg.ServerConfig(
        scripts={},
        listen=cfg.UnixListen(path=Path("/run/upparat/hooks.sock")),
        default_retry_after=None,
        cancel_grace_period=10.0,
        socket_mode=0o660,
        script_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        log_level="INFO",
        download_dir=Path(tempfile.gettempdir()) / "upparat",  # the daemon's default
        state_dir=Path("/var/lib/upparat-hookserver"),
        trusted_keys=None,
        require_signature=False,
    )


def test_the_state_dir_is_systemds_state_directory_unless_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/upparat-hookserver-x:/var/lib/other")
    assert parse("").state_dir == Path("/var/lib/upparat-hookserver-x")
    assert parse("[hookserver]\nstate_dir = /srv/hs\n").state_dir == Path("/srv/hs")


def test_the_shared_service_keys_are_read_as_the_daemon_reads_them(tmp_path: Path) -> None:
    key = make_key(tmp_path, "release")

    config = parse(
        f"[service]\ndownload_location = {tmp_path}\ntrusted_keys = {key.public}\n"
        "require_signature = yes\n"
    )

    assert config.download_dir == tmp_path / "upparat"
    assert config.trusted_keys is not None
    assert [k.source for k in config.trusted_keys.keys] == [str(key.public)]
    assert config.require_signature is True


def test_a_bad_trusted_keys_is_a_config_error_of_the_hook_server_too(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError) as err:
        parse(f"[service]\ntrusted_keys = {tmp_path / 'missing.pem'}\nrequire_signature = 1\n")

    assert "config: [service] trusted_keys must be a PEM file" in str(err.value)


def test_listen_overrides_endpoint_and_the_command_line_overrides_both() -> None:
    text = "[hooks]\nendpoint = unix:/a.sock\n[hookserver]\nlisten = unix:///b.sock\n"

    assert parse(text).listen == cfg.UnixListen(path=Path("/b.sock"))
    assert parse(text, listen="[::1]:9000").listen == cfg.TcpListen(host="::1", port=9000)
    assert parse("[hooks]\nendpoint = unix:/a.sock\n").listen == cfg.UnixListen(
        path=Path("/a.sock")
    )


@pytest.mark.parametrize(
    ("text", "listen"),
    [
        ("unix:///run/x.sock", cfg.UnixListen(path=Path("/run/x.sock"))),
        ("unix:/run/x.sock", cfg.UnixListen(path=Path("/run/x.sock"))),
        (":50051", cfg.TcpListen(host="127.0.0.1", port=50051)),
        ("0.0.0.0:50051", cfg.TcpListen(host="0.0.0.0", port=50051)),
        ("[::1]:7", cfg.TcpListen(host="::1", port=7)),
    ],
)
def test_listen_forms(text: str, listen: cfg.Listen) -> None:
    assert cfg.parse_listen(text) == listen


@pytest.mark.parametrize(
    "text", ["unix://host/x.sock", "unix:", "localhost", ":0", ":99999", "::1:80"]
)
def test_bad_listen_forms(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked through parse()
        cfg.parse_listen(text)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(cfg.ConfigError) as err:
        parse(
            "[hookserver]\nsocket_mode = 0644\ndefault_retry_after = -1\nlog_level = loud\nfoo = 1\n"
        )

    lines = str(err.value).splitlines()
    assert len(lines) == 4
    assert any('unknown key "foo"' in line for line in lines)


def test_a_bare_script_name_is_found_on_script_path(tmp_path: Path) -> None:
    script = tmp_path / "version.sh"
    script.write_text("#!/bin/sh\necho 1\n")
    script.chmod(0o755)

    config = parse(f"[hooks]\nversion = version.sh\n[hookserver]\nscript_path = {tmp_path}\n")

    assert config.scripts == {"version": script}
    assert cfg.script_problems(config) == []


# --- from a script's end to a HookResult ---------------------------------------------------


def outcome(
    ending: Exited | Signalled | NotStarted, *lines: str, stderr: str = ""
) -> ScriptOutcome:
    return ScriptOutcome(
        ending=ending, stopped=None, last_lines=lines, stderr_tail=stderr, duration=0.1
    )


SCRIPT = Path("/usr/lib/upparat/hooks/x.sh")


def test_retry_after_directive_wins_over_the_default() -> None:
    result, _ = hook_result(
        "ready", SCRIPT, outcome(Exited(code=3), "booting", "retry-after=2.5"), 60
    )

    assert result.outcome == hooks_pb2.OUTCOME_RETRY_LATER
    assert result.retry_after.ToTimedelta().total_seconds() == 2.5
    assert result.message == "booting"


def test_a_bad_retry_after_directive_falls_back_to_the_default() -> None:
    result, _ = hook_result("ready", SCRIPT, outcome(Exited(code=3), "retry-after=soon"), 60)

    assert result.retry_after.ToTimedelta().total_seconds() == 60


def test_a_script_that_cannot_start_is_a_failure() -> None:
    result, _ = hook_result("install", SCRIPT, outcome(NotStarted(error="Exec format error")), None)

    assert result.outcome == hooks_pb2.OUTCOME_FAILURE
    assert result.reason == "HOOK_NOT_STARTED"
    assert "Exec format error" in result.message


@pytest.mark.parametrize(
    ("line", "percent"),
    [
        (" 40% Copying image", 40),
        ("Installing: 100%", 100),
        ("12.5% done", 12),
        ("version 1.2.3", None),
        ("150%", None),
        ("2024.05%", None),
    ],
)
def test_percent_of_a_progress_line(line: str, percent: int | None) -> None:
    assert percent_of(line) == percent
