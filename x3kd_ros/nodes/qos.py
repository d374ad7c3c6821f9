"""QoS of the nodes' subscriptions and publishers.

Sensor inputs default to the sensor-data profile (best effort, volatile, keep last 5): a best
effort subscription matches both reliable and best-effort publishers, and a slow consumer drops
old frames instead of stalling the publisher. Outputs default to reliable, keep last 10.
``qos.input.*`` / ``qos.output.*`` parameters change that per node, and rclpy's standard
per-topic ``qos_overrides.<topic>.<publisher|subscription>.*`` parameters work on top (the nodes
pass ``QoSOverridingOptions.with_default_policies()``). Every node logs the QoS each
subscription actually got (:func:`describe_qos`).
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from x3kd_ros.nodes.params import ParamSpec, in_range, one_of

__all__ = [
    "RELIABILITY_CHOICES",
    "qos_profile",
    "qos_param_specs",
    "static_tf_qos",
    "describe_qos",
]


RELIABILITY_CHOICES = ("best_effort", "reliable")
_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def qos_profile(reliability: str, depth: int, transient_local: bool = False) -> QoSProfile:
    """Keep-last QoS with the given reliability ("best_effort" | "reliable") and depth."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=_RELIABILITY[reliability],
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE,
    )


def qos_param_specs(prefix: str, reliability: str, depth: int, what: str) -> list[ParamSpec]:
    """``<prefix>.reliability`` and ``<prefix>.depth`` parameters for the QoS of ``what``."""
    return [
        ParamSpec(f"{prefix}.reliability", reliability, f"QoS reliability of {what}",
                  "best_effort | reliable", one_of(*RELIABILITY_CHOICES)),
        ParamSpec(f"{prefix}.depth", int(depth), f"QoS keep-last depth of {what} (messages)",
                  "1..1000", in_range(1, 1000)),
    ]


def static_tf_qos() -> QoSProfile:
    """``/tf_static`` as tf2_ros' static listener reads it: reliable, transient local, keep last 100."""
    return qos_profile("reliable", 100, transient_local=True)


def describe_qos(profile: QoSProfile) -> str:
    """``"best_effort, volatile, keep_last(5)"``, for the log line every subscription gets."""

    def name(policy) -> str:
        return getattr(policy, "name", str(policy)).lower()

    history = name(profile.history)
    depth = f"({profile.depth})" if profile.history == HistoryPolicy.KEEP_LAST else ""
    return f"{name(profile.reliability)}, {name(profile.durability)}, {history}{depth}"
