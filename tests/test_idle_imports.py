"""What an idle daemon never uses is not loaded: each module costs RSS for months (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys

from upparat.core.commands import DiscardDownload
from upparat.core.model import JobId
from upparat.daemon import DownloaderOnDemand
from upparat.runtime import DownloadDriver


def loaded_after(code: str, *modules: str) -> list[str]:
    probe = f"import json, sys; {code}; print(json.dumps([m for m in {list(modules)!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_the_daemon_loads_the_download_stack_only_for_a_download() -> None:
    assert loaded_after("import upparat.cli, upparat.daemon", "upparat.io.download") == []


def test_the_download_driver_is_built_at_its_first_command_and_closed_only_if_built() -> None:
    built: list[Recording] = []

    class Recording:
        def __init__(self) -> None:
            self.seen: list[object] = []
            self.closed = False

        def execute(self, command: object) -> None:
            self.seen.append(command)

        def close(self) -> None:
            self.closed = True

    def make() -> DownloadDriver:
        built.append(Recording())
        return built[-1]

    unused = DownloaderOnDemand(make)
    unused.close()
    assert built == []

    driver = DownloaderOnDemand(make)
    first, second = DiscardDownload(job_id=JobId("a")), DiscardDownload(job_id=JobId("b"))
    driver.execute(first)
    driver.execute(second)
    driver.close()
    assert len(built) == 1
    assert built[0].seen == [first, second]
    assert built[0].closed
