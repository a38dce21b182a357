"""The choice a request with a deadline makes after its head: send it, and how long to wait for the
answer before finishing on the device (splitdnn.runtime._deadline, pure Python)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import threading

import pytest

from splitdnn.errors import RemoteError
from splitdnn.runtime._deadline import (
    MIN_SAMPLES,
    Distribution,
    History,
    RemoteProbes,
    Spread,
    deadline_wait_ms,
    median_rule_wait_ms,
    spread_or_none,
)


def _dist(*ratios: float, censored: tuple[float, ...] = ()) -> Distribution:
    return Distribution.of([(r, False) for r in ratios] + [(r, True) for r in censored])


def _made(
    left: float, rest: float, local: float, wait: float, remote: list[float], device: list[float]
) -> float:
    """The share of (remote, device) pairs that make the deadline when waiting ``wait`` ms."""
    made = 0
    for r in remote:
        for d in device:
            answer = rest * r
            made += answer <= left if answer <= wait else wait + local * d <= left
    return made / (len(remote) * len(device))


# --------------------------------------------------------------------------------------------------
# the distribution


def test_without_censored_samples_it_is_the_empirical_distribution() -> None:
    d = _dist(1.0, 2.0, 2.0, 4.0)
    assert d.points == (1.0, 2.0, 4.0)
    assert [d.cdf(x) for x in (0.5, 1.0, 1.5, 2.0, 3.9, 4.0, 100.0)] == [0, 0.25, 0.25, 0.75, 0.75, 1.0, 1.0]


def test_censored_samples_follow_kaplan_meier() -> None:
    # 1 answered, 2 given up, 3 and 4 answered: S(1) = 3/4; 2 left at risk at 3: S(3) = 3/4 * 1/2;
    # one at risk at 4: S(4) = 0
    d = _dist(1.0, 3.0, 4.0, censored=(2.0,))
    assert d.cdf(1.0) == pytest.approx(0.25)
    assert d.cdf(2.5) == pytest.approx(0.25)  # a give-up is not counted as an answer...
    assert d.cdf(3.0) == pytest.approx(0.625)  # ...nor as one that never comes
    assert d.cdf(4.0) == pytest.approx(1.0)
    # given up later than every answer: the chance never reaches 1
    late = _dist(1.0, 1.0, censored=(5.0, 5.0))
    assert late.cdf(1e9) == pytest.approx(0.5)
    # an answer and a give-up at one time: the answer counts first
    assert _dist(1.0, censored=(1.0,)).cdf(1.0) == pytest.approx(0.5)
    assert Distribution.of([]).cdf(1.0) == 0.0


def test_a_spread_keeps_a_window_of_sane_ratios() -> None:
    s = Spread(window=4)
    for measured, predicted in [(1.0, 0.0), (1.0, -1.0), (1.0, math.nan), (1.0, math.inf), (-1.0, 1.0)]:
        s.add(measured, predicted)
    assert len(s) == 0 and spread_or_none(s, 1) is None and s.quantile(0.5) is None
    for i in range(6):
        s.add(10.0 * (i + 1), 10.0)  # ratios 1..6; the window keeps 3..6
    s.add(20.0, 10.0, censored=True)  # 3..6 less the oldest, and a give-up at 2
    assert len(s) == 4 and s.answered() == 3
    assert s.distribution().points == (4.0, 5.0, 6.0)
    assert s.quantile(0.3) == 4.0 and s.quantile(1.0) == 6.0
    assert spread_or_none(s, 3) is not None and spread_or_none(s, 4) is None
    assert MIN_SAMPLES >= 5  # enough that one stall is not a tail


def test_a_spread_forgets_what_is_older_than_its_age() -> None:
    now = [0.0]
    s = Spread(max_age_s=60.0, clock=lambda: now[0])
    for i in range(10):
        now[0] = float(i)
        s.add(1.0, 1.0)
    now[0] = 64.5  # the first five are older than 60 s
    assert len(s) == 5 and s.answered() == 5 and spread_or_none(s, 5) is not None
    now[0] = 100.0
    assert len(s) == 0 and spread_or_none(s, 1) is None


def test_the_device_is_judged_by_its_finishes_once_it_has_enough() -> None:
    h = History()
    assert h.device() is None
    for _ in range(4):
        h.heads.add(1.0, 1.0)
        h.finishes.add(2.0, 1.0)
    both = h.device()  # 8 runs of either kind
    assert both is not None and both.cdf(1.0) == 0.5 and both.cdf(2.0) == 1.0
    for _ in range(4):
        h.finishes.add(3.0, 1.0)
    finishes = h.device()
    assert finishes is not None and finishes.cdf(1.5) == 0.0 and finishes.cdf(2.0) == 0.5
    # the remote window decides whether there is a choice at all
    assert h.choose(100.0, 150.0, 60.0).wait_ms == 0.0 and math.isnan(h.choose(100.0, 150.0, 60.0).made)
    for _ in range(MIN_SAMPLES):
        h.remote.add(1.0, 1.0)
    assert h.choose(100.0, 150.0, 20.0).made == 1.0


def test_the_history_describes_its_windows() -> None:
    h = History()
    assert h.describe() == ""
    for r in (1.0, 1.0, 1.2, 2.0):
        h.remote.add(r, 1.0)
    h.remote.add(3.0, 1.0, censored=True)
    h.finishes.add(1.1, 1.0)
    # Kaplan-Meier: 0.4 in by 1.0, 0.6 by 1.2, 0.8 by 2.0; never 0.9 as far as it knows
    assert h.describe() == "rest x1.20/- (5, 1 given up); device finishes x1.10/x1.10 (1)"
    for _ in range(5):
        h.remote.add(4.0, 1.0, censored=True)
    assert h.describe().startswith("rest -/- (10, 6 given up)")  # 0.4 in by 2.0, the rest given up


def test_the_deadline_module_imports_no_torch_or_grpc() -> None:
    code = (
        "import sys, splitdnn.runtime._deadline\n"
        "bad = [m for m in ('torch', 'numpy', 'grpc') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------------
# the choice


@pytest.mark.parametrize(
    ("left", "rest", "local", "expected"),
    [
        (100.0, 150.0, 60.0, 0.0),  # the rest misses, the device makes it: finish here now
        (100.0, 150.0, 120.0, 0.0),  # both miss, the device by less
        (100.0, 150.0, 200.0, math.inf),  # both miss, the server by less: wait for it
        (100.0, 50.0, 30.0, 70.0),  # until the device can still make it
        (100.0, 50.0, 120.0, math.inf),  # the device cannot make it: wait for the answer
    ],
)
def test_without_a_history_the_medians_decide(
    left: float, rest: float, local: float, expected: float
) -> None:
    assert median_rule_wait_ms(left, rest, local) == expected
    assert deadline_wait_ms(left, rest, local, None, None).wait_ms == expected
    assert deadline_wait_ms(left, rest, local, None, _dist(0.5, 3.0)).wait_ms == expected  # (remote decides)


def test_a_steady_server_is_waited_for_where_the_medians_would_give_up_early() -> None:
    """The rest takes 50 ms give or take 10 %, the device 80: the medians cut at 20 ms, before any
    answer can come, and leave the device exactly its median (made half the time); the history
    says the answer makes it, so it waits for it."""
    remote = [0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 1.0, 0.98]
    device = [0.9, 1.0, 1.1, 1.2, 1.0, 0.95, 1.05, 1.0]
    assert median_rule_wait_ms(100.0, 50.0, 80.0) == 20.0
    wait = deadline_wait_ms(100.0, 50.0, 80.0, _dist(*remote), _dist(*device)).wait_ms
    assert wait == math.inf
    assert _made(100.0, 50.0, 80.0, wait, remote, device) == 1.0
    assert _made(100.0, 50.0, 80.0, 20.0, remote, device) < 0.7


def test_a_cut_hedges_only_where_the_device_surely_makes_it() -> None:
    """Every recent answer came in time (27-33 ms) and the device surely makes it up to 50 ms in: the
    request is sent and cut at 50 ms, against an answer later than any in the window. Where the
    device might miss after every cut a window's answer could precede, the answer is waited for
    instead. Where the device at once is as sure, sooner on average, and the answer mostly comes
    after the cut, it finishes there; not merely because it is sooner (the planner chose the plan)."""
    remote = _dist(0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 1.0, 0.98)
    choice = deadline_wait_ms(100.0, 30.0, 50.0, remote, _dist(0.9, 1.0))
    assert choice.wait_ms == pytest.approx(50.0) and choice.made == 1.0 and choice.sure
    choice = deadline_wait_ms(100.0, 30.0, 50.0, remote, _dist(0.9, 2.0))
    assert choice.wait_ms == math.inf and choice.made == 1.0 and not choice.sure
    # the device (27-30 ms) sooner than the answers (45-55 ms): the plan still sends, since the
    # answer beats the cut; where it mostly comes after it, the device at once
    choice = deadline_wait_ms(100.0, 50.0, 30.0, remote, _dist(0.9, 1.0))
    assert choice.wait_ms == pytest.approx(70.0) and choice.sure
    late = _dist(1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0)
    choice = deadline_wait_ms(100.0, 50.0, 30.0, late, _dist(0.9, 1.0))
    assert choice.wait_ms == 0.0 and choice.sure and choice.made == 1.0


def test_the_last_moment_the_device_makes_it_survives_rounding() -> None:
    """left - (left - x) is not always x in floating point: the hedge at the device's last moment
    must still count the device's slowest run as making it."""
    remote = _dist(0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 1.0, 0.98)
    rng = random.Random(3)
    for _ in range(200):
        left, local, worst = rng.uniform(80, 300), rng.uniform(40, 60), rng.uniform(1.05, 1.3)
        rest = rng.uniform(5, min(30, (left - local * worst) / 1.2))
        choice = deadline_wait_ms(left, rest, local, remote, _dist(0.9, worst))
        assert choice.sure and choice.wait_ms == pytest.approx(left - local * worst), (left, local, worst)


def test_a_server_that_stalls_often_loses_a_tight_deadline_to_the_device() -> None:
    """A third of the answers come 6x late; the device's spread is narrow but real. With the
    deadline above the device's worst and the rest's median under it, the medians send and cut
    late; the device at once makes it every time."""
    remote = [1.0] * 6 + [6.0] * 3
    device = [0.9, 1.0, 1.0, 1.1, 1.3, 1.0, 1.2, 1.05]
    left, rest, local = 100.0, 40.0, 70.0
    assert median_rule_wait_ms(left, rest, local) == 30.0  # cut before the median answer: then late
    wait = deadline_wait_ms(left, rest, local, _dist(*remote), _dist(*device)).wait_ms
    assert wait == 0.0
    assert _made(left, rest, local, wait, remote, device) == 1.0
    assert _made(left, rest, local, 30.0, remote, device) < 0.8
    # with a deadline the device makes even after waiting for the median answer, it sends
    wait = deadline_wait_ms(150.0, rest, local, _dist(*remote), _dist(*device)).wait_ms
    assert 40.0 <= wait < 150.0 and _made(150.0, rest, local, wait, remote, device) == 1.0


def test_given_up_requests_count_as_neither_made_nor_lost() -> None:
    """Half the recent requests were given up at 1.5x: the answer's chance by the deadline is at
    most a half, so a device that surely makes it is chosen; had the give-ups been counted as
    answers at 1.5x, the server would look certain."""
    left, rest, local = 100.0, 50.0, 90.0
    device = _dist(1.0, 1.0, 1.05, 1.1)
    assert deadline_wait_ms(left, rest, local, _dist(*[1.0] * 8, censored=(1.5,) * 8), device).wait_ms == 0.0
    assert deadline_wait_ms(left, rest, local, _dist(*[1.0] * 8, *[1.5] * 8), device).wait_ms == math.inf


def test_no_wait_is_chosen_by_the_end_of_which_no_answer_comes() -> None:
    """A device point (the last moment it still makes it) before the first answer ever came: a
    send, a wait and then the device makes it exactly as often as the device at once."""
    wait = deadline_wait_ms(100.0, 50.0, 60.0, _dist(1.0, 1.2, 3.0), _dist(0.5, 1.0)).wait_ms
    assert wait == 0.0 or wait >= 50.0


def test_when_nothing_makes_it_the_medians_decide() -> None:
    remote, device = _dist(5.0, 6.0), _dist(3.0, 4.0)
    for rest, local in [(50.0, 40.0), (50.0, 80.0)]:
        assert deadline_wait_ms(100.0, rest, local, remote, device).wait_ms == median_rule_wait_ms(
            100.0, rest, local
        )


def test_the_chosen_wait_is_the_best_of_every_wait() -> None:
    """Against a brute-force search over a fine grid of waits, on random histories: the choice makes
    the deadline as often as the best wait (the chance counted over every pair of samples)."""
    rng = random.Random(7)
    for _ in range(200):
        remote = [rng.lognormvariate(0, 0.6) * (8 if rng.random() < 0.2 else 1) for _ in range(12)]
        device = [rng.lognormvariate(0, 0.15) for _ in range(10)]
        left, rest, local = rng.uniform(20, 200), rng.uniform(10, 150), rng.uniform(10, 150)
        wait = deadline_wait_ms(left, rest, local, _dist(*remote), _dist(*device)).wait_ms
        waits = [*(left * i / 400 for i in range(401)), *(rest * r for r in remote), math.inf]
        best = max(_made(left, rest, local, w, remote, device) for w in waits)
        assert _made(left, rest, local, wait, remote, device) >= best - 1e-9


# --------------------------------------------------------------------------------------------------
# probes: a deadline finished on the device at once keeps the remote's record current


def test_a_spread_tells_the_age_of_its_newest_sample() -> None:
    now = [10.0]
    s = Spread(clock=lambda: now[0])
    assert s.age_s() == math.inf
    s.add(1.0, 1.0)
    now[0] = 12.5
    s.add(3.0, 1.0, censored=True)  # a give-up renews it too
    now[0] = 13.0
    assert s.age_s() == pytest.approx(0.5)


def _probes(interval_s: float = 1.0) -> tuple[RemoteProbes, Spread, list[float]]:
    now = [100.0]
    return RemoteProbes(interval_s, clock=lambda: now[0]), Spread(clock=lambda: now[0]), now


def test_one_probe_at_a_time_and_none_sooner_than_the_interval() -> None:
    probes, remote, now = _probes(1.0)
    release = threading.Event()
    ran: list[int] = []

    def work() -> bool:
        ran.append(1)
        release.wait(5.0)
        return True

    assert probes.due(remote) and probes.start(remote, work)
    now[0] += 5.0  # long past the interval, but one is in flight
    assert not probes.due(remote) and not probes.start(remote, work)
    release.set()
    assert probes.wait(5.0)
    assert probes.started == 1 and probes.failures == 0 and ran == [1]
    now[0] += 0.5  # ... and the interval counts from the last start (5.5 s ago)
    assert probes.start(remote, lambda: True) and probes.wait(5.0)
    now[0] += 0.5
    assert not probes.due(remote)  # 0.5 s after that one's start
    now[0] += 0.5
    assert probes.due(remote)
    remote.add(1.0, 1.0)  # the client's own request renewed the window: no probe needed
    assert not probes.due(remote) and not probes.start(remote, lambda: True)
    now[0] += 1.0
    # a probe predicted to take 0.3 s on the remote path: at most a tenth of the time, 3 s apart
    assert not probes.due(remote, gap_s=3.0) and not probes.start(remote, lambda: True, gap_s=3.0)
    now[0] += 2.0
    assert probes.start(remote, lambda: True, gap_s=3.0) and probes.wait(5.0) and probes.started == 3


def test_a_probe_that_fails_is_counted_and_not_raised() -> None:
    probes, remote, now = _probes(0.001)
    assert probes.start(remote, lambda: False) and probes.wait(5.0)  # no answer (given up, too large)

    def refused() -> bool:
        raise RemoteError("the server said no", code="UNAVAILABLE")

    now[0] += 1.0
    assert probes.start(remote, refused) and probes.wait(5.0)
    assert probes.started == 2 and probes.failures == 2


def test_a_probe_gives_way_to_the_client_s_own_requests() -> None:
    probes, remote, _ = _probes(0.001)
    release, cancels = threading.Event(), []

    def work() -> bool:
        assert probes.sending(lambda: (cancels.append(1), release.set()))
        release.wait(5.0)
        return False  # (the call, cancelled, has no answer)

    probes.give_way()  # nothing in flight: nothing to cancel
    assert probes.start(remote, work)
    for _ in range(500):  # until the probe's call is in flight
        if probes._cancel is not None:
            break
        threading.Event().wait(0.01)
    probes.give_way()
    probes.give_way()  # once only
    assert probes.wait(5.0) and cancels == [1] and probes.cancelled == 1 and probes.failures == 1
    assert probes._cancel is None


def test_closed_probes_start_no_more() -> None:
    probes, remote, _ = _probes(0.001)
    probes.close(timeout=0.0)
    assert not probes.due(remote) and not probes.start(remote, lambda: True)
    assert probes.started == 0 and probes.wait(0.0)
