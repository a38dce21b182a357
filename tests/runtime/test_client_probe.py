"""The client's link prober, with fake calls: when probes start, what they carry, what they cost."""

from __future__ import annotations

import pytest

from splitdnn.errors import ConfigError, RemoteError
from splitdnn.runtime._probe import LinkProber, ProbeSettings
from splitdnn.runtime.planner import LinkEstimator
from splitdnn.schema import Link


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _prober(settings: ProbeSettings, clock: FakeClock, link: Link, sent: list[bytes]) -> LinkProber:
    est = LinkEstimator(Link(1.1, rtt_ms=20.0), clock=clock)

    def observe(up: int, down: int, ms: float) -> bool:
        est.observe(up, down, ms)
        return False

    def send(payload: bytes) -> tuple[int, int, float]:
        sent.append(payload)
        clock.t += 0.05  # the probe takes 50 ms of the fake clock
        return len(payload), 10, link.rtt_ms + link.uplink_ms(len(payload))

    return LinkProber(
        settings, ping=lambda: link.rtt_ms, send=send, observe_ping=est.observe_ping,
        observe=observe, link=lambda: est.link, note=lambda text: None, clock=clock,
    )  # fmt: skip


def test_edge_only_probes_every_edge_interval_after_the_last_one_ended() -> None:
    clock, sent = FakeClock(), list[bytes]()
    prober = _prober(ProbeSettings(edge_interval_s=0.25), clock, Link(1.1, rtt_ms=20.0), sent)
    assert prober.maybe_start(edge_only=True, last_observed=clock.t)
    assert prober.wait(5.0)
    clock.t += 0.2  # 0.2 s after the probe ended: not yet
    assert not prober.maybe_start(edge_only=True, last_observed=clock.t)
    clock.t += 0.06
    assert prober.maybe_start(edge_only=True, last_observed=clock.t)
    assert prober.wait(5.0)
    # off edge-only, a fresh observation means no probe; a stale one waits for interval_s
    clock.t += 1.0
    assert not prober.maybe_start(edge_only=False, last_observed=clock.t)
    assert not prober.maybe_start(edge_only=False, last_observed=clock.t - 5.0 + 1.5)
    assert prober.probes == 2 and prober.failures == 0
    # edge-only, the payload is target_ms (25 ms) of a link optimism (4) x the estimated 1.1 Mbit/s
    # (100 ms of the link as estimated); random bytes, never the input
    assert [len(p) for p in sent] == [pytest.approx(13_750, rel=0.01)] * 2 and len(set(sent[0])) > 200


def test_the_edge_interval_never_exceeds_the_interval() -> None:
    clock, sent = FakeClock(), list[bytes]()
    prober = _prober(ProbeSettings(interval_s=0.1, edge_interval_s=0.25), clock, Link(1.1), sent)
    assert prober.maybe_start(edge_only=True, last_observed=clock.t)
    assert prober.wait(5.0)
    clock.t += 0.11
    assert prober.maybe_start(edge_only=True, last_observed=clock.t)
    assert prober.wait(5.0)


def test_probe_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="edge_interval_s"):
        ProbeSettings(edge_interval_s=0.0)
    assert ProbeSettings().payload_bytes(Link(100.0)) == 256 << 10  # capped at max_bytes
    assert ProbeSettings().payload_bytes(Link(18.88)) == int(18.88e6 / 8 * 0.025)
    assert ProbeSettings().payload_bytes(Link(0.13), edge_only=True) == 8 << 10  # the floor
    with pytest.raises(ConfigError, match="optimism"):
        ProbeSettings(optimism=0.5)


def test_a_step_up_while_edge_only_is_measured_again_at_once() -> None:
    clock, sent = FakeClock(), list[bytes]()
    answers = [True, False]  # the first payload was a step and the plan stayed edge-only

    def send(payload: bytes) -> tuple[int, int, float]:
        sent.append(payload)
        return len(payload), 10, 21.0

    prober = LinkProber(
        ProbeSettings(), ping=lambda: 20.0, send=send, observe_ping=lambda ms: None,
        observe=lambda up, down, ms: answers.pop(0), link=lambda: Link(1.1 * (1 + len(sent))),
        note=lambda text: None, clock=clock,
    )  # fmt: skip
    assert prober.maybe_start(edge_only=True, last_observed=clock.t)
    assert prober.wait(5.0)
    # two payloads in one probe, the second sized for the new estimate
    assert len(sent) == 2 and len(sent[1]) > len(sent[0]) and prober.probes == 1 and not answers


def _ladder(link: Link, burst: int = 0) -> tuple[list[int], list[tuple[int, float]], list[str]]:
    """Run a start-up probe against a link (``burst`` bytes go at once): sizes sent, samples, notes."""
    sent: list[int] = []
    observed: list[tuple[int, float]] = []
    notes: list[str] = []

    def send(payload: bytes) -> tuple[int, int, float]:
        sent.append(len(payload))
        return len(payload), 10, link.rtt_ms + link.uplink_ms(max(0, len(payload) - burst))

    prober = LinkProber(
        ProbeSettings(), ping=lambda: link.rtt_ms, send=send, observe_ping=lambda ms: None,
        observe=lambda up, down, ms: bool(observed.append((up, ms))), link=lambda: Link(100.0),
        note=notes.append, clock=FakeClock(),
    )  # fmt: skip
    prober.probe_now()
    assert prober.probes == 1
    return sent, observed, notes


def test_the_start_up_probe_stops_at_the_first_rung_that_takes_time() -> None:
    # a slow link: the first 8 KiB take 0.5 s; nothing larger is sent (the prior said 100 Mbit/s)
    sent, observed, _ = _ladder(Link(0.13, rtt_ms=20.0))
    assert sent == [8 << 10] and observed == [(8 << 10, pytest.approx(20.0 + 504.1, rel=0.01))]
    # 18.88 Mbit/s with a 5 ms burst: 8 KiB fits in the burst, 32 KiB is past it (8.5 ms), 128 KiB
    # takes 25 ms: the last two rungs are samples, the first is not (it would read as infinitely fast)
    sent, observed, _ = _ladder(Link(18.88, rtt_ms=20.0), burst=11_800)
    assert sent == [8 << 10, 32 << 10, 128 << 10] and [up for up, _ in observed] == [32 << 10, 128 << 10]
    # 100 Mbit/s with a 62.5 kB burst: up to max_bytes; 128 KiB is 5.5 ms past the burst
    sent, observed, _ = _ladder(Link(100.0, rtt_ms=20.0), burst=62_500)
    assert sent == [8 << 10, 32 << 10, 128 << 10, 256 << 10]
    assert [up for up, _ in observed] == [128 << 10, 256 << 10]
    # no burst on 100 Mbit/s: 32 KiB takes 2.6 ms, under a fifth of 25 ms: only 128 and 256 KiB count
    sent, observed, _ = _ladder(Link(100.0, rtt_ms=20.0))
    assert [up for up, _ in observed] == [128 << 10, 256 << 10]


def test_the_start_up_probe_lets_the_estimator_price_a_bursty_link() -> None:
    link, burst = Link(100.0, rtt_ms=20.0), 62_500

    def shaped_ms(n: int) -> float:
        return link.rtt_ms + link.uplink_ms(max(0, n - burst))

    est = LinkEstimator(Link(100.0, downlink_mbps=100.0, rtt_ms=20.0))
    prober = LinkProber(
        ProbeSettings(), ping=lambda: link.rtt_ms, send=lambda p: (len(p), 4, shaped_ms(len(p))),
        observe_ping=est.observe_ping, observe=lambda up, down, ms: bool(est.observe(up, down, ms)),
        link=lambda: est.link, note=lambda text: None, clock=FakeClock(), remember=est.remember,
    )  # fmt: skip
    prober.probe_now()
    assert est.fitted  # two sizes: the fit is over the transfers alone (RTT less the burst's time)
    assert [s.bytes_up for s in est.samples] == [0, 128 << 10, 256 << 10]
    # right after the probe the estimate is already near the rate, not the burst's 2 x (the smaller
    # payload was kept for the fit, not folded in alone)
    assert est.link.uplink_mbps == pytest.approx(100.0, rel=0.15)
    # requests of one size, within 2 x of the probe's: priced right once the smoothing settles
    # (pings and one size alone read this link as 174 Mbit/s)
    for _ in range(6):
        est.observe(150_000, 4_000, shaped_ms(154_000))  # a response of 4 kB counts as 4 kB more
    lk = est.link
    assert lk.rtt_ms + lk.uplink_ms(154_000) == pytest.approx(shaped_ms(154_000), rel=0.03)
    assert lk.rtt_ms + lk.uplink_ms(602_000) == pytest.approx(shaped_ms(602_000), rel=0.03)


def test_the_start_up_probe_never_raises() -> None:
    def refuse(payload: bytes) -> tuple[int, int, float]:
        raise RemoteError("no", code=code)

    cases = (("UNIMPLEMENTED", "no splitdnn.v1 Probe RPC"), ("UNAVAILABLE", "start-up link probe failed"))
    for code, what in cases:
        notes: list[str] = []
        prober = LinkProber(
            ProbeSettings(), ping=lambda: 5.0, send=refuse, observe_ping=lambda ms: None,
            observe=lambda up, down, ms: False, link=lambda: Link(1.0), note=notes.append, clock=FakeClock(),
        )  # fmt: skip
        prober.probe_now()
        assert len(notes) == 1 and what in notes[0]
        assert prober.failures == (code != "UNIMPLEMENTED")
    prober.close()
    prober.probe_now()  # closed: nothing sent, nothing counted
    assert prober.probes == 1
