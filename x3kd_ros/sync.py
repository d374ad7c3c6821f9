"""Approximate-time synchronizer over N sensor streams (pure Python, no ROS imports).

A node should hold no algorithm, so the matching logic lives in this module and is tested with
scripted streams (no live graph). With every camera present it emits the same sets as ROS 2's
``message_filters.ApproximateTimeSynchronizer`` (test_sync.py checks it against the vendored
source); by design it also emits partial sets (a dead camera), decides them by timeout, aligns
per-sensor offsets, resets on time jumps, and keeps sets in stamp order.
A node feeds every received message in with :meth:`ApproximateTimeSync.add` and calls
:meth:`ApproximateTimeSync.poll` from a timer so that a dead stream still releases its sets.

Behaviour (all times are integer nanoseconds):

* **Aligned stamp.** Each item's stamp is first moved onto a common clock:
  ``aligned = stamp_ns - offset_ns(stream)``. ``offset_ns`` is how far a stream's stamps run
  *behind the reference on purpose*, e.g. nuScenes cameras are triggered one after another as the
  LiDAR sweeps past them, so CAM_BACK fires tens of ms after CAM_FRONT. Matching uses only
  aligned stamps; the raw stamps are handed back in :attr:`SyncedSet.stamps_ns`.
* **Matching.** Items wait in one queue per stream, sorted by aligned stamp. The candidate set is
  anchored at the oldest queued item ``t0`` (over all streams); a stream is *present* in it when
  its oldest queued item has ``aligned <= t0 + slop_ns``. So every emitted set has a spread
  (max - min aligned stamp) of at most ``slop_ns``. Use ``slop_ns`` below half the frame period,
  or two frames of one stream can fall into one window and matching becomes ambiguous.
* **Complete sets** (every stream present) are emitted at once, oldest first.
* **Incomplete sets.** A missing stream is *known-missing* when its queue already holds a newer
  item (it has moved past ``t0``; per stream, stamps are expected in order), and *waiting* when its
  queue is empty. The set is decided when it can no longer change, or on timeout:

  - policy ``"drop"``: dropped as soon as one stream is known-missing, or when ``timeout_ns``
    has passed since the first of its items arrived (``now_ns`` of that ``add``).
  - policy ``"partial"``: decided when every missing stream is known-missing or on the same
    timeout; then emitted with the present streams (``SyncedSet.missing`` lists the others) if at
    least ``min_streams`` are present, else dropped.

  Sets are decided strictly in anchor order, so a waiting set holds back newer complete ones
  until it is decided (output is never reordered).
* **Late items.** Once a set anchored at ``t0`` is decided (emitted or dropped), an item with
  ``aligned <= t0 + slop_ns`` can no longer join any set: it is discarded and counted in
  :attr:`SyncStats.late`. This covers out-of-order stamps and frames arriving after their set
  timed out (e.g. a stream that comes back and first flushes an old buffer).
* **Duplicates.** An item whose raw stamp equals one already queued for the same stream, or the
  stamp of that stream's last consumed item, is discarded (:attr:`SyncStats.duplicates`); the
  first copy wins.
* **Bounded queues.** Each stream keeps at most ``queue_size`` items; adding one more discards
  that stream's oldest item (:attr:`SyncStats.overflow`).
* **Time that jumps back.** A stream whose stamp goes back by more than ``jump_ns`` (default:
  ``slop_ns``) from that stream's previous stamp means the clock restarted: a looped bag, a
  simulator reset, ``use_sim_time`` restarting. Without care every later item would be "late"
  until the stamps passed the old maximum. Instead the synchronizer flushes what it holds (each
  pending set is decided as on timeout, so nothing of the old timeline is silently lost), forgets
  every stream's stamps and starts afresh with the new item; :attr:`SyncStats.time_jumps` counts
  it, :attr:`ApproximateTimeSync.last_jump` describes it and ``on_time_jump`` (if given) is called
  before the reset, so a node can reset its own per-stream state and log it once.
* ``now_ns`` is the receive time on any monotonic clock (it need not be the stamps' clock, so bag
  replay works); it only drives timeouts.

Counters (:class:`SyncStats`): ``emitted`` counts every set returned (complete and partial),
``partial`` those of them with missing streams, ``dropped_sets`` sets discarded by the policy,
and ``late`` / ``duplicates`` / ``overflow`` single items discarded for those reasons;
``time_jumps`` counts resets after a backwards jump.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional, Union

__all__ = ["SyncConfig", "SyncedSet", "SyncStats", "TimeJump", "ApproximateTimeSync"]


@dataclass(frozen=True)
class SyncConfig:
    """Settings of :class:`ApproximateTimeSync` (see the module docstring for the semantics).

    Fields:
        slop_ns: largest allowed spread of aligned stamps within one set (ns).
        queue_size: items kept per stream before the oldest is discarded.
        timeout_ns: how long an incomplete set waits for its missing streams, counted from the
            receive time of its first item (ns).
        policy: "drop" discards incomplete sets; "partial" emits them with the streams present.
        min_streams: with "partial", the fewest present streams a set needs to be emitted.
        offsets_ns: (stream name, offset ns) pairs; a stream's aligned stamp is
            ``stamp_ns - offset_ns``. A mapping is accepted too and stored as sorted pairs.
        jump_ns: a stream's stamp going back by more than this from its previous stamp resets
            the synchronizer (see the module docstring); None = ``slop_ns``.
    """

    slop_ns: int = 20_000_000
    queue_size: int = 10
    timeout_ns: int = 150_000_000
    policy: Literal["drop", "partial"] = "drop"
    min_streams: int = 1
    offsets_ns: tuple[tuple[str, int], ...] = ()
    jump_ns: Optional[int] = None

    def __post_init__(self) -> None:
        offsets: Union[Mapping[str, int], tuple] = self.offsets_ns
        if isinstance(offsets, Mapping):
            offsets = tuple(sorted(offsets.items()))
        offsets = tuple((str(name), int(value)) for name, value in offsets)
        object.__setattr__(self, "offsets_ns", offsets)
        names = [name for name, _ in offsets]
        if len(set(names)) != len(names):
            raise ValueError(f"offsets_ns names a stream twice: {names}")
        if self.slop_ns < 0:
            raise ValueError(f"slop_ns must be >= 0, got {self.slop_ns}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.timeout_ns < 0:
            raise ValueError(f"timeout_ns must be >= 0, got {self.timeout_ns}")
        if self.policy not in ("drop", "partial"):
            raise ValueError(f"policy must be 'drop' or 'partial', got {self.policy!r}")
        if self.min_streams < 1:
            raise ValueError(f"min_streams must be >= 1, got {self.min_streams}")
        if self.jump_ns is not None and self.jump_ns < 0:
            raise ValueError(f"jump_ns must be >= 0 (or None for slop_ns), got {self.jump_ns}")

    @property
    def jump_threshold_ns(self) -> int:
        return self.slop_ns if self.jump_ns is None else int(self.jump_ns)


@dataclass
class SyncedSet:
    """One synchronized set.

    Fields:
        stamp_ns: reference stamp of the set: the lower median of its items' aligned stamps (ns),
            i.e. always the aligned stamp of one of its items.
        items: stream name -> item, only for streams present.
        stamps_ns: stream name -> raw (unaligned) stamp of that item (ns).
        missing: names of the streams absent from the set, in stream order (empty if complete).
        spread_ns: max - min aligned stamp of the items present (ns), <= slop_ns.
    """

    stamp_ns: int
    items: dict[str, Any]
    stamps_ns: dict[str, int]
    missing: list[str]
    spread_ns: int

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass
class SyncStats:
    """Counters since construction (see the module docstring)."""

    emitted: int = 0
    partial: int = 0
    dropped_sets: int = 0
    late: int = 0
    duplicates: int = 0
    overflow: int = 0
    time_jumps: int = 0


@dataclass(frozen=True)
class TimeJump:
    """One backwards jump: ``stream``'s stamp went from ``from_ns`` back to ``to_ns``.

    ``flushed_sets`` / ``flushed_items``: sets of the old timeline decided at the reset (emitted
    or dropped by the policy) and items that were waiting in them.
    """

    stream: str
    from_ns: int
    to_ns: int
    flushed_sets: int = 0
    flushed_items: int = 0

    @property
    def back_s(self) -> float:
        return (self.from_ns - self.to_ns) / 1e9


@dataclass(order=True)
class _Entry:
    aligned_ns: int
    stamp_ns: int = field(compare=False)
    received_ns: int = field(compare=False)
    item: Any = field(compare=False)


class ApproximateTimeSync:
    """Groups items of ``stream_names`` whose aligned stamps lie within ``config.slop_ns``.

    Args:
        config: matching, queue and timeout settings.
        stream_names: the streams to synchronize; their order is the order of ``missing``.
        on_time_jump: called with a :class:`TimeJump` when a backwards jump resets the
            synchronizer (after the flush, before the new item is queued).
    """

    def __init__(self, config: SyncConfig, stream_names: list[str],
                 on_time_jump: Optional[Callable[[TimeJump], None]] = None) -> None:
        names = list(stream_names)
        if not names:
            raise ValueError("ApproximateTimeSync needs at least one stream")
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique: {names}")
        offsets = dict(config.offsets_ns)
        unknown = sorted(set(offsets) - set(names))
        if unknown:
            raise ValueError(f"offsets_ns names unknown streams {unknown} (streams: {names})")
        if config.policy == "partial" and config.min_streams > len(names):
            raise ValueError(f"min_streams={config.min_streams} exceeds the {len(names)} streams")
        self.config = config
        self.stream_names: tuple[str, ...] = tuple(names)
        self.stats = SyncStats()
        self._offsets = {name: offsets.get(name, 0) for name in names}
        self._queues: dict[str, list[_Entry]] = {name: [] for name in names}
        # Last consumed raw stamp per stream, to recognise a re-sent frame as a duplicate.
        self._last_stamp: dict[str, int | None] = {name: None for name in names}
        # Window end (anchor + slop) of the last decided set; items at or before it are late.
        self._decided_until: int | None = None
        # Newest raw stamp received per stream (queued, consumed or late), to see time jump back.
        self._newest_stamp: dict[str, int | None] = {name: None for name in names}
        self.on_time_jump = on_time_jump
        self.last_jump: Optional[TimeJump] = None

    def add(self, stream: str, stamp_ns: int, item: Any, now_ns: int) -> list[SyncedSet]:
        """Queue ``item`` of ``stream`` stamped ``stamp_ns``; return the sets this completes.

        ``now_ns`` is the receive time (drives timeouts). The result is oldest first and often
        empty; it can hold several sets when a burst completes them, and it can hold sets
        decided by a timeout that ``now_ns`` reveals.
        """
        if stream not in self._queues:
            raise ValueError(f"unknown stream {stream!r} (streams: {list(self.stream_names)})")
        stamp_ns = int(stamp_ns)
        flushed: list[SyncedSet] = []
        newest = self._newest_stamp[stream]
        if newest is not None and newest - stamp_ns > self.config.jump_threshold_ns:
            flushed = self._reset_after_jump(stream, newest, stamp_ns)
            newest = None
        self._newest_stamp[stream] = stamp_ns if newest is None else max(newest, stamp_ns)
        return flushed + self._add(stream, stamp_ns, item, now_ns)

    def _reset_after_jump(self, stream: str, from_ns: int, to_ns: int) -> list[SyncedSet]:
        """Flush every pending set (as on timeout), forget all stamps; see the module docstring."""
        items = sum(len(q) for q in self._queues.values())
        dropped_before = self.stats.dropped_sets
        flushed = self._drain(None)
        jump = TimeJump(stream, from_ns, to_ns, len(flushed) + self.stats.dropped_sets - dropped_before, items)
        for name in self.stream_names:
            self._queues[name].clear()
            self._last_stamp[name] = None
            self._newest_stamp[name] = None
        self._decided_until = None
        self.stats.time_jumps += 1
        self.last_jump = jump
        if self.on_time_jump is not None:
            self.on_time_jump(jump)
        return flushed

    def _add(self, stream: str, stamp_ns: int, item: Any, now_ns: int) -> list[SyncedSet]:
        queue = self._queues[stream]
        if stamp_ns == self._last_stamp[stream] or any(e.stamp_ns == stamp_ns for e in queue):
            self.stats.duplicates += 1
            return self._drain(now_ns)
        aligned = stamp_ns - self._offsets[stream]
        if self._decided_until is not None and aligned <= self._decided_until:
            self.stats.late += 1
            return self._drain(now_ns)
        bisect.insort(queue, _Entry(aligned, stamp_ns, int(now_ns), item))
        if len(queue) > self.config.queue_size:
            dropped = queue.pop(0)
            self._last_stamp[stream] = dropped.stamp_ns
            self.stats.overflow += 1
        return self._drain(now_ns)

    def poll(self, now_ns: int) -> list[SyncedSet]:
        """Decide sets whose timeout has passed at ``now_ns``; call it from a timer."""
        return self._drain(now_ns)

    def pending(self) -> dict[str, int]:
        """Number of queued items per stream."""
        return {name: len(q) for name, q in self._queues.items()}

    def _drain(self, now_ns: Optional[int]) -> list[SyncedSet]:
        """Decide every set that can be decided at ``now_ns``; None = everything (as if timed out)."""
        out: list[SyncedSet] = []
        cfg = self.config
        while True:
            heads = {name: q[0] for name, q in self._queues.items() if q}
            if not heads:
                return out
            anchor = min(entry.aligned_ns for entry in heads.values())
            window_end = anchor + cfg.slop_ns
            present = [n for n in self.stream_names if n in heads and heads[n].aligned_ns <= window_end]
            missing = [n for n in self.stream_names if n not in present]
            if missing:
                # A missing stream with a newer item queued has moved past this set for good;
                # one with an empty queue may still deliver.
                known_missing = any(n in heads for n in missing)
                waiting = any(n not in heads for n in missing)
                opened = min(heads[n].received_ns for n in present)
                timed_out = now_ns is None or int(now_ns) - opened >= cfg.timeout_ns
                if cfg.policy == "drop":
                    # One known-missing stream already dooms the set; no reason to wait.
                    decide = timed_out or known_missing
                else:
                    decide = timed_out or not waiting
                if not decide:
                    return out
            entries = {n: self._queues[n].pop(0) for n in present}
            for n, entry in entries.items():
                self._last_stamp[n] = entry.stamp_ns
            self._decided_until = window_end
            # A second item of one stream inside the decided window (slop too wide for the frame
            # rate) can join no later set either: treat it like any other late item.
            for n in present:
                queue = self._queues[n]
                while queue and queue[0].aligned_ns <= window_end:
                    self._last_stamp[n] = queue.pop(0).stamp_ns
                    self.stats.late += 1
            if missing and (cfg.policy == "drop" or len(present) < cfg.min_streams):
                self.stats.dropped_sets += 1
                continue
            aligned = sorted(e.aligned_ns for e in entries.values())
            out.append(
                SyncedSet(
                    stamp_ns=aligned[(len(aligned) - 1) // 2],
                    items={n: e.item for n, e in entries.items()},
                    stamps_ns={n: e.stamp_ns for n, e in entries.items()},
                    missing=missing,
                    spread_ns=aligned[-1] - aligned[0],
                )
            )
            self.stats.emitted += 1
            if missing:
                self.stats.partial += 1
