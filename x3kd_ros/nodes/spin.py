"""Running a node: steady-clock timers (they keep running with ``use_sim_time`` when ``/clock``
pauses or jumps back), ``main()`` with the network rule, clean Ctrl-C / SIGTERM handling and
shutdown (:func:`spin_node`), and :func:`spin_until` for tests and tools."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

from x3kd_ros.nodes.params import ParameterError

__all__ = [
    "steady_timer",
    "spin_until",
    "SHUTDOWN_WORKER_WAIT_S",
    "spin_node",
]


def steady_timer(node, period_s: float, callback: Callable[[], Any]):
    """A node timer on the steady clock: it fires on wall time even with ``use_sim_time`` (a paused
    or restarted ``/clock`` must not stop timeouts and diagnostics)."""
    from rclpy.clock import Clock, ClockType

    return node.create_timer(period_s, callback, clock=Clock(clock_type=ClockType.STEADY_TIME))


def spin_until(executor, condition: Callable[[], bool], deadline_s: float, step_s: float = 0.02) -> bool:
    """Spin ``executor`` (``spin_once`` with ``step_s`` timeouts) until ``condition()`` holds or
    ``deadline_s`` seconds pass; returns the final ``condition()`` (for tests and benchmarks that
    drive their own executor)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        executor.spin_once(timeout_sec=step_s)
    return condition()


#: How long a node's model thread may finish the item in progress at shutdown (s). ``ros2 launch``
#: escalates to SIGTERM 5 s after SIGINT; the rest of the clean-up needs well under a second.
SHUTDOWN_WORKER_WAIT_S = 2.0


def _install_stop_handlers() -> threading.Event:
    """SIGINT / SIGTERM handlers for a node process; returns the event they set.

    The first signal raises KeyboardInterrupt in the main thread (ending the spin, or a model load
    in progress); every later one does nothing. A Ctrl-C in the terminal of ``ros2 launch`` /
    ``ros2 run`` reaches every node twice (the terminal signals the whole process group, then launch
    signals each child): the second one must not interrupt the clean-up the first one started (it
    did: exit code -2 with a KeyboardInterrupt traceback). rclpy installs its own handlers on top at
    ``rclpy.init`` (they wake the executor and shut the context down) and chains to these; when
    rclpy shuts down it restores these, so they also cover the interpreter's exit.
    """
    import signal

    stopping = threading.Event()

    def on_stop_signal(signum, frame) -> None:
        if stopping.is_set():
            return
        stopping.set()
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_stop_signal)
    return stopping


def spin_node(factory: Callable[[], Any], args: Optional[Sequence[str]] = None) -> int:
    """``main()`` of every node: network rule, ``rclpy.init``, spin until Ctrl-C / shutdown, clean up.

    Shutdown: the first SIGINT or SIGTERM ends the spin; later ones are ignored while the node
    cleans up (:func:`_install_stop_handlers`); the model thread gets :data:`SHUTDOWN_WORKER_WAIT_S` to finish its
    item. If it is still inside a model call after that, the process ends with ``os._exit`` (after
    flushing its output) rather than tearing the interpreter down under a running torch call.

    Returns the process exit code: 0 after a normal stop (Ctrl-C, SIGTERM, shutdown), 2 for invalid
    parameters (the message names them), 1 for another start-up error.
    """
    from x3kd_ros.graph.environment import apply_network_rule

    apply_network_rule()  # keeps a ROS_DOMAIN_ID / ROS_LOG_DIR the caller chose
    import rclpy
    from rclpy.executors import ExternalShutdownException

    stopping = _install_stop_handlers()
    node = None
    code = 0
    try:
        rclpy.init(args=list(args) if args is not None else sys.argv)
        node = factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterError as err:
        rclpy.logging.get_logger("x3kd").fatal(str(err))
        code = 2
    finally:
        stopping.set()  # from here on SIGINT / SIGTERM do nothing: the clean-up is under way
        worker = getattr(node, "worker", None)
        if worker is not None:
            worker.stop(timeout_s=SHUTDOWN_WORKER_WAIT_S)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if worker is not None and worker.alive():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
