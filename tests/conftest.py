"""Shared fixtures. The end-to-end ones start real processes (see tests/support)."""

from __future__ import annotations

import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from support import LIVE, Control, Relayd, Stack, Upstream, relay_config
from support.impls import COMPILED, NOT_BUILT, TWIN


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of every process still running to a failed test's report."""
    report = yield
    if report.failed:
        for service in LIVE:
            report.sections.append((f"{service.name} log (pid {service.pid})", service.log_tail()))
    return report


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """upstream, relayd and lighttpd, shared by one module's tests."""
    running = Stack(tmp_path_factory.mktemp("stack"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    """lighttpd straight to the upstream, no relayd: the harness's own baseline."""
    running = Control(tmp_path_factory.mktemp("control"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A recording upstream shared by one module's tests (each with a relayd of its own)."""
    running = Upstream(tmp_path_factory.mktemp("up"))
    yield running
    running.stop()


@pytest.fixture
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # short: a Unix socket path must fit in 108 bytes
    return tmp_path_factory.mktemp("wd")


@pytest.fixture
def relayd(workdir: Path, upstream: Upstream) -> Iterator[Relayd]:
    """relayd with the test policy, in front of the module's upstream."""
    running = Relayd(workdir, relay_config(workdir, upstream.url))
    yield running
    running.stop()


@pytest.fixture(params=["twin", "compiled"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each fast-path implementation in turn: the pure-Python twin and the compiled module."""
    if request.param == "twin":
        return TWIN
    if COMPILED is None:
        warnings.warn(NOT_BUILT, stacklevel=1)
        pytest.skip(NOT_BUILT)
    return COMPILED

