"""The bench's rules on fronts and curves (docs/bench.md, "Claims and their rules").

Fronts: a method's sweep (R0 over lambda_w, DI++ over its KL weight) gives one point per run,
(mean L3/L4 accuracy, world-FID) after the same training time. One front dominates another
when every point of the other is matched or beaten by one of its points, and at least one
is beaten. A gap within the tolerance (accuracy 0.02; FID 5 %; the same ones `claims.compare`
uses) is a tie.

Curves: time-to-threshold on the tracked accuracy against training wall-clock. The threshold
sits at `THRESHOLD_FRACTION` of the way from the compared runs' start to the lowest of their
plateaus, so every compared run crosses it; a run is faster when it gets there sooner by more
than `TIME_TOLERANCE` (relative) and more than one tracking interval.
"""

from __future__ import annotations

import math
from typing import NamedTuple

# Smallest differences that count (claims.ABS_TOL takes its accuracy and FID entries from here).
ACC_TOL = 0.02  # absolute, on an accuracy in [0, 1]
FID_REL_TOL = 0.05  # relative, of the larger world-FID
THRESHOLD_FRACTION = 0.8  # of the smaller gain (plateau - start) of the compared runs
PLATEAU_POINTS = 3  # a run's plateau: the mean of its last tracked values
TIME_TOLERANCE = 0.2  # a time-to-threshold difference counts above 20 % of the longer time ...
# ... and above one tracking interval (the curves' time resolution), whichever is larger.


class Point(NamedTuple):
    """One run on the accuracy / FID plane: acc is the mean L3/L4 all-correct accuracy (up is
    better), fid the world-FID (down is better)."""

    label: str
    acc: float
    fid: float


def _acc_sign(a: float, b: float) -> int:
    """+1 if accuracy a beats b by more than the accuracy tolerance, -1 if it loses, 0 a tie."""
    d = a - b
    return 1 if d > ACC_TOL else -1 if d < -ACC_TOL else 0


def _fid_sign(a: float, b: float) -> int:
    """+1 if FID a is lower than b by more than 5 % of the larger one, -1 if higher, 0 a tie."""
    d = b - a
    tol = FID_REL_TOL * max(abs(a), abs(b))
    return 1 if d > tol else -1 if d < -tol else 0


def weakly_dominates(p: Point, q: Point) -> bool:
    """p is no worse than q on either axis (ties within tolerance count as equal)."""
    return _acc_sign(p.acc, q.acc) >= 0 and _fid_sign(p.fid, q.fid) >= 0


def strictly_dominates(p: Point, q: Point) -> bool:
    """p weakly dominates q and beats it on at least one axis by more than the tolerance."""
    return weakly_dominates(p, q) and (_acc_sign(p.acc, q.acc) > 0 or _fid_sign(p.fid, q.fid) > 0)


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats exactly (no tolerance here), sorted by FID. NaNs dropped."""
    pts = [p for p in points if not (math.isnan(p.acc) or math.isnan(p.fid))]

    def beaten(q):
        return any(p.acc >= q.acc and p.fid <= q.fid and (p.acc > q.acc or p.fid < q.fid) for p in pts)

    return sorted((q for q in pts if not beaten(q)), key=lambda p: (p.fid, -p.acc))


def _covers(a: list[Point], b: list[Point]) -> bool:
    """Every point of b weakly dominated by a point of a, and one strictly."""
    return (all(any(weakly_dominates(p, q) for p in a) for q in b)
            and any(strictly_dominates(p, q) for p in a for q in b))


def front_dominance(a: list[Point], b: list[Point]) -> str:
    """confirmed: A's front dominates B's; refuted: B's dominates A's; mixed: neither (the fronts
    cross or tie), both (possible only through tolerances), or a front is empty."""
    fa, fb = pareto_front(a), pareto_front(b)
    if not fa or not fb:
        return "mixed"
    a_wins, b_wins = _covers(fa, fb), _covers(fb, fa)
    return "confirmed" if a_wins and not b_wins else "refuted" if b_wins and not a_wins else "mixed"


# ------------------------------------------------------------------ curves
def series(curve: dict, key: str) -> list[tuple[float, float]]:
    """(train seconds, value) pairs of one column of a curve table; missing values left out."""
    ts, vs = curve.get("train_seconds", []), curve.get(key, [])
    return [(float(t), float(v)) for t, v in zip(ts, vs)
            if t is not None and v is not None and not math.isnan(float(v))]


def time_to_threshold(curve: dict, key: str, threshold: float, lower_is_better: bool = False) -> float | None:
    """First training time at which `key` reaches `threshold`, interpolated linearly between the
    last tracked point short of it and the first at or past it; None if it never does."""
    sign = -1.0 if lower_is_better else 1.0
    pts = series(curve, key)
    for i, (t, v) in enumerate(pts):
        if sign * v >= sign * threshold:
            if i == 0:
                return t
            t0, v0 = pts[i - 1]  # sign * v0 < sign * threshold <= sign * v, so v != v0
            return t0 + (threshold - v0) / (v - v0) * (t - t0)
    return None


def plateau(curve: dict, key: str, last: int = PLATEAU_POINTS) -> float | None:
    """Mean of the last `last` tracked values: where the run ended up, less one point's noise."""
    vals = [v for _, v in series(curve, key)][-last:]
    return sum(vals) / len(vals) if vals else None


def shared_threshold(curves: list[dict], key: str, fraction: float = THRESHOLD_FRACTION,
                     lower_is_better: bool = False) -> tuple[float, float, float] | None:
    """(threshold, start, plateau): `fraction` of the way from the highest start to the lowest
    plateau of all `curves` (the other way round for lower-is-better keys). The plateau is a mean
    of last values, so each run has a value past the threshold: every run crosses it. None when a
    curve is empty or the smallest gain is within the accuracy tolerance (nothing to time)."""
    sign = -1.0 if lower_is_better else 1.0
    starts = [series(c, key)[:1] for c in curves]
    plateaus = [plateau(c, key) for c in curves]
    if not curves or any(not s for s in starts) or any(p is None for p in plateaus):
        return None
    start = sign * max(sign * s[0][1] for s in starts)
    end = sign * min(sign * p for p in plateaus)
    if sign * (end - start) <= ACC_TOL:
        return None
    return start + fraction * (end - start), start, end


def tracking_interval(curves: list[dict]) -> float:
    """Median spacing in training seconds between consecutive tracked points (0 if none)."""
    gaps = []
    for c in curves:
        ts = [t for t in c.get("train_seconds", []) if t is not None]
        gaps += [b - a for a, b in zip(ts, ts[1:])]
    gaps.sort()
    return gaps[len(gaps) // 2] if gaps else 0.0


def time_verdict(times_a: list[float | None], times_b: list[float | None], resolution: float = 0.0) -> str:
    """A (several seeds) against B on time-to-threshold: confirmed if A's mean time is shorter by
    more than max(TIME_TOLERANCE x the longer mean, resolution), refuted if longer by that much.
    A run that never crosses counts as slower than any that does; neither crossing: mixed."""
    a_all = bool(times_a) and all(t is not None for t in times_a)
    b_all = bool(times_b) and all(t is not None for t in times_b)
    if not a_all or not b_all:
        return "confirmed" if a_all else "refuted" if b_all else "mixed"
    ta, tb = sum(times_a) / len(times_a), sum(times_b) / len(times_b)
    margin = max(TIME_TOLERANCE * max(ta, tb), resolution)
    return "confirmed" if tb - ta > margin else "refuted" if ta - tb > margin else "mixed"


def speed_verdict(curves_a: list[dict], curves_b: list[dict], key: str = "acc_mean") -> tuple[str, str]:
    """(verdict, evidence) for "A trains faster than B" on the tracked `key` against training time."""
    shared = shared_threshold([*curves_a, *curves_b], key)
    if shared is None:
        return "mixed", f"tracked {key} did not rise by more than {ACC_TOL} in every run; nothing to time"
    threshold, start, end = shared
    ta = [time_to_threshold(c, key, threshold) for c in curves_a]
    tb = [time_to_threshold(c, key, threshold) for c in curves_b]
    resolution = tracking_interval([*curves_a, *curves_b])

    def fmt(ts):
        return "[" + ", ".join("never" if t is None else f"{t:.0f}" for t in ts) + "] s"

    ev = (f"threshold {key} {threshold:.3f} ({THRESHOLD_FRACTION:g} of the way from start {start:.3f} to the lowest "
          f"plateau {end:.3f}); reached after {fmt(ta)} vs {fmt(tb)} of training (tolerance "
          f"max({TIME_TOLERANCE:.0%}, tracking interval {resolution:.0f} s))")
    return time_verdict(ta, tb, resolution), ev
