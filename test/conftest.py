"""Session-wide test set-up.

The ROS network rule is applied at import time: pytest imports this file before it collects any
test module, so no test (or library it imports) can start rclpy with discovery reaching beyond
localhost. The domain id is derived from pytest's pid, so parallel pytest runs on one machine
do not see each other's topics; rcl logs go to the git-ignored build/ folder.
"""

from __future__ import annotations

import os

# Before anything imports torch: OpenMP threads that spin while waiting make a 2-core machine
# several times slower as soon as another process (a node under test, a second pytest) is busy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from x3kd_core.paths import REPO_ROOT
from x3kd_ros.graph.environment import apply_network_rule, pid_domain_id


# Explicit pid-derived domain (not an inherited ROS_DOMAIN_ID): two test sessions must never share one.
ROS_NETWORK = apply_network_rule(
    domain_id=pid_domain_id(), log_dir=str(REPO_ROOT / "build" / "test_ros_log")
)


def _load_test_module(name: str, relative: str):
    """A helper module of test/ by path (conftests and helpers are not importable by name under
    importlib mode)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "test" / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Every process a test starts inherits this marker: the session can tell which of them outlive their test.
_watch = _load_test_module("x3kd_test_process_watch", "process_watch.py")
os.environ[_watch.MARKER] = str(os.getpid())
_LEFTOVERS: dict[int, tuple[str, str]] = {}  # pid -> (the test after which it was first seen, its command line)
_SIGNAL_LEAKS: list[str] = []  # the first test after which SIGINT was ignored or blocked in this process
_SIGINT_AT_START = _watch.sigint_state(os.getpid())
if _SIGINT_AT_START in ("ignored", "blocked"):  # e.g. pytest started as a background job (`cmd &` in a script)
    _SIGNAL_LEAKS.append(f"SIGINT was {_SIGINT_AT_START} when pytest started (a background job inherits that); "
                         "every process the tests start inherits it too")


@pytest.fixture(autouse=True)
def _note_leftover_processes(request):
    """After each test (its fixtures torn down too, this one being set up first): note marked
    processes still alive; a module- or session-scoped fixture's process is noted too, and only
    reported at the end if it outlives the session."""
    yield
    for process in _watch.marked_processes(_watch.marker_session(), exclude={os.getpid()}):
        _LEFTOVERS.setdefault(process.pid, (request.node.nodeid, process.cmdline))
    # A test that leaves SIGINT ignored or blocked in this process passes that on to every process the
    # later tests start (both survive exec): their Ctrl-C would do nothing. Name it, once.
    state = _watch.sigint_state(os.getpid())
    if state in ("ignored", "blocked") and not _SIGNAL_LEAKS:
        _SIGNAL_LEAKS.append(f"SIGINT {state} in the pytest process after {request.node.nodeid}")


def pytest_terminal_summary(terminalreporter):
    """List the processes this session started that are still running at its end (by the test after
    which each was first seen): a leak, which slows every later test on 2 cores."""
    import time

    deadline = time.monotonic() + 3.0  # a process may be ending right now
    alive = _watch.marked_processes(_watch.marker_session(), exclude={os.getpid()})
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = _watch.marked_processes(_watch.marker_session(), exclude={os.getpid()})
    if _SIGNAL_LEAKS:
        terminalreporter.section("SIGINT state of the pytest process")
        terminalreporter.write_line(_SIGNAL_LEAKS[0])
    if alive:
        terminalreporter.section("processes started by tests and still running")
        for process in alive:
            test, _ = _LEFTOVERS.get(process.pid, ("(first seen at the end)", ""))
            terminalreporter.write_line(f"pid {process.pid} [{process.state}] after {test}: {process.cmdline[:200]}")


@pytest.fixture
def marked_process_report():
    """Callable -> text: this session's live processes (a test's own children included) and the load
    average, for a failure message that must say what else was running."""
    def report() -> str:
        processes = _watch.marked_processes(_watch.marker_session(), exclude={os.getpid()})
        leak = f"; {_SIGNAL_LEAKS[0]}" if _SIGNAL_LEAKS else ""
        return (f"load average {_watch.load_average()}; pytest's own SIGINT: {_watch.sigint_state(os.getpid())}{leak}; "
                f"processes of this test session:\n{_watch.describe(processes)}")
    return report


@pytest.fixture(scope="session")
def pair_boxes():
    """test/box_pairing.py's pair_by_label_and_centre: boxes of two decoded lists paired by label and
    nearest centre (list order differs where scores differ by float rounding)."""
    return _load_test_module("x3kd_test_box_pairing", "box_pairing.py").pair_by_label_and_centre


@pytest.fixture(scope="session")
def ros_network() -> dict:
    """The ROS environment variables this session runs under (name -> value)."""
    return dict(ROS_NETWORK)


# FIXTURES-BELOW (lead adds dataset fixtures here, e.g. the session-scoped `tiny_dataroot`)


def _data_conftest():
    """test/x3kd_core/data/conftest.py as a module; it owns the one recipe for the tiny synthetic dataset."""
    return _load_test_module("x3kd_test_data_conftest", "x3kd_core/data/conftest.py")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """(dataroot, version) of the tiny synthetic dataset, shared by every test folder (generated
    once per session into the same folder the data tests use)."""
    return _data_conftest().build_tiny_dataset(tmp_path_factory.getbasetemp() / "tiny_dataset")


@pytest.fixture(scope="session")
def tiny_teachers(tiny_dataset, tmp_path_factory) -> dict:
    """Checkpoints of a LiDAR and an instance-segmentation teacher on the tiny dataset (one
    training step each: enough to be real checkpoints of the right kind and grid), by teacher name."""
    from x3kd_core.experiment import load_experiment, train_experiment

    dataroot, _ = tiny_dataset
    out = tmp_path_factory.mktemp("tiny_teachers")
    paths = {}
    for name, extra in (("lidar", []), ("instance_seg", ["train.batch_size=1"])):
        exp = load_experiment(REPO_ROOT / "config" / "train" / f"{name}_tiny.yaml",
                              [f"data.dataroot={dataroot}", "train.max_steps=1", "train.epochs=null", *extra])
        paths[name] = train_experiment(exp, out / name, device="cpu").checkpoint
    return paths
