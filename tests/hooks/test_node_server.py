"""The Node.js example hook server (hookservers/node) against the hook contract.

`TestNodeHookServer` runs the shared contract cases of contract_cases.py against it, the
same cases upparat-hookserver passes except those of the download hook, which this example
leaves out on purpose (`SERVES`: they are not generated), plus a few cases beyond the
contract that any implementation could share. The tests after it cover what is the
example's own: its command-line options, refusing a download script, --proto-root.
"""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.hooks.contract_cases import (
    CALL_TIMEOUT,
    EVAL_SCRIPT,
    GRACE,
    HookServerContract,
    HookServerFactory,
    Implementation,
    RunningHookServer,
    call,
    free_again,
    hook_server_factory,
    job,
    killing_pids_afterwards,
    read_pids,
    rpc_code,
    wait_for_file,
    wait_gone,
)
from upparat.hooks.v1 import hooks_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = REPO_ROOT / "hookservers" / "node"
SERVER_JS = NODE_DIR / "server.js"
NODE = shutil.which("node")
NODE_HOOKS = ("version", "install", "restart", "ready")
"""The hooks the example implements: all but download."""


def node_missing() -> str | None:
    """Why the Node server cannot run here, or None."""
    if NODE is None:
        return "node is not installed: run make test (installs the node packages)"
    dependencies = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    missing = [d for d in dependencies if not (NODE_DIR / "node_modules" / d).is_dir()]
    if missing:
        return f"hookservers/node/node_modules lacks {', '.join(missing)}: run make test (installs the node packages)"
    return None


def node_command(*args: str) -> list[str]:
    return [NODE or "node", str(SERVER_JS), *args]


NODE_SERVER = Implementation(
    name="node", argv=lambda conf: node_command("-c", str(conf)), skip_reason=node_missing
)


# --- the shared contract --------------------------------------------------------------


class TestNodeHookServer(HookServerContract):
    SERVES = NODE_HOOKS
    """The example leaves CheckDownload out (and refuses a download script), so the
    contract's download cases are not generated for it."""

    @pytest.fixture(scope="class")
    @classmethod
    def implementation(cls) -> Implementation:
        return NODE_SERVER

    # -- beyond the contract (cases every implementation could share) -------------------

    def test_a_cancelled_script_gets_sigterm_then_sigkill(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        # The script notes the SIGTERM and carries on; the SIGKILL after the grace period ends it.
        pidfile = tmp_path / "pids"
        script = f"""
            trap 'echo TERM >> {tmp_path}/signals' TERM
            echo $$ > {pidfile}
            echo started
            while :; do sleep 0.05; done
        """
        with killing_pids_afterwards(pidfile):
            stream = eval_server.hooks().Install(
                eval_server.install_request(job(meta=script)),
                timeout=CALL_TIMEOUT,
            )
            assert next(stream).progress.line == "started"
            pids = read_pids(pidfile, 1)

            stream.cancel()

            assert wait_gone(pids, GRACE + 1) == []
        assert (tmp_path / "signals").read_text() == "TERM\n"
        free_again(eval_server, "install")

    def test_fast_install_output_is_merged_into_a_few_progress_messages(
        self, eval_server: RunningHookServer
    ) -> None:
        answer = call(
            eval_server,
            "install",
            """
            i=0
            while [ $i -le 100 ]; do echo "$i% copying image"; i=$((i+1)); done
            echo "installed"
            """,
        )

        printed = [f"{i}% copying image" for i in range(101)] + ["installed"]
        lines = [p.line for p in answer.progress]
        assert 1 <= len(lines) < 20
        assert lines[-1] == "installed"  # the newest line is never dropped
        assert lines == sorted(lines, key=printed.index)  # in order, a subsequence of the output
        for progress in answer.progress[:-1]:
            assert progress.percent == int(progress.line.split("%")[0])
        assert not answer.progress[-1].HasField("percent")
        assert answer.result.outcome == hooks_pb2.OUTCOME_SUCCESS

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
        assert answer.result.detail == "e" * 1024
        assert [len(p.line) for p in answer.progress] == [1024, len("last line")]

    def test_processes_a_script_leaves_in_its_group_are_killed(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        # The leftover holds the script's stdout open: the answer must not wait for it.
        pidfile = tmp_path / "pids"
        with killing_pids_afterwards(pidfile):
            answer = call(eval_server, "ready", f"sleep 300 & echo $! > {pidfile}; echo ready")

            assert answer.result.outcome == hooks_pb2.OUTCOME_SUCCESS
            assert answer.result.message == "ready"
            assert wait_gone(read_pids(pidfile, 1), GRACE + 1) == []

    def test_a_process_that_left_the_group_does_not_hold_the_answer(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        # setsid takes the sleep out of the script's group, out of reach, as a daemon would
        # do; it keeps the stdout pipe open, which must not keep the call waiting.
        pidfile = tmp_path / "pids"
        script = f"""
            setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 300' &
            while [ ! -e {pidfile} ]; do sleep 0.01; done
            echo ready
        """
        with killing_pids_afterwards(pidfile):
            answer = call(eval_server, "ready", script)

        assert answer.result.outcome == hooks_pb2.OUTCOME_SUCCESS
        assert answer.result.message == "ready"

    def test_the_environment_is_exactly_the_documented_one_and_cwd_is_root(
        self, eval_server: RunningHookServer, tmp_path: Path
    ) -> None:
        out = tmp_path / "env"
        call(eval_server, "install", f"pwd > {out}.tmp; env >> {out}.tmp; mv {out}.tmp {out}")

        cwd, *env = wait_for_file(out).splitlines()
        names = {line.split("=", 1)[0] for line in env}
        assert cwd == "/"
        assert names - {"PWD"} == {  # /bin/sh adds PWD itself
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

    def test_a_nul_in_the_meta_is_an_invalid_argument(self, eval_server: RunningHookServer) -> None:
        with pytest.raises(grpc.RpcError) as err:
            call(eval_server, "ready", "echo \0")

        assert rpc_code(err.value) == grpc.StatusCode.INVALID_ARGUMENT


# --- the example's own ------------------------------------------------------------------


@pytest.fixture
def hook_server(tmp_path: Path) -> Iterator[HookServerFactory]:
    with hook_server_factory(NODE_SERVER, tmp_path) as factory:
        yield factory


def test_command_line_options_configure_it_without_a_config_file(
    hook_server: HookServerFactory, tmp_path: Path
) -> None:
    version = hook_server.write_script("version.sh", "echo 3.1.4")
    ready = hook_server.write_script("ready.sh", "echo up")
    sock = tmp_path / "cli.sock"
    flags = ["--listen", f"unix:{sock}", "--version-script", str(version)]
    flags += ["--ready-script", str(ready), "--grace-period", "0.5"]
    # The factory writes a config file too; this command line does not read it.
    with hook_server_factory(
        Implementation("node-cli", lambda conf: node_command(*flags), node_missing), tmp_path
    ) as factory:
        server = factory.start({}, socket_path=sock)
        info = server.identity().GetInfo(hooks_pb2.GetInfoRequest(), timeout=CALL_TIMEOUT)
        answer = call(server, "version")
        with pytest.raises(grpc.RpcError) as download:
            call(server, "download")
        mode = sock.stat().st_mode
    # The factory stopped it with SIGTERM: it removed its socket file.
    assert not sock.exists()

    assert info.server_name == "upparat-node-example"
    assert list(info.api_versions) == ["v1"]
    assert list(info.hooks) == [hooks_pb2.HOOK_VERSION, hooks_pb2.HOOK_READY]
    assert info.manifest["script.version"] == str(version)
    assert answer.version == "3.1.4"
    assert rpc_code(download.value) == grpc.StatusCode.UNIMPLEMENTED
    assert stat.S_IMODE(mode) == 0o660


def test_a_download_script_is_refused_at_start(hook_server: HookServerFactory) -> None:
    # Ignoring it would start downloads the script is there to hold back.
    conf = hook_server.write_config(
        {"version": EVAL_SCRIPT, "download": EVAL_SCRIPT}, socket_path=hook_server.socket_path()
    )

    code, output = hook_server.run_to_exit(conf)

    assert code == 2
    assert "[hooks] download" in output
    assert "does not implement" in output


def test_a_proto_root_without_the_contract_exits_2(
    hook_server: HookServerFactory, tmp_path: Path
) -> None:
    conf = hook_server.write_config({"version": EVAL_SCRIPT}, socket_path=hook_server.socket_path())
    implementation = Implementation(
        name="node-proto-root",
        argv=lambda conf: node_command("-c", str(conf), "--proto-root", str(tmp_path)),
        skip_reason=node_missing,
    )

    with hook_server_factory(implementation, tmp_path) as factory:
        code, output = factory.run_to_exit(conf)

    assert code == 2
    assert f"cannot load hooks.proto from --proto-root {tmp_path}" in output
