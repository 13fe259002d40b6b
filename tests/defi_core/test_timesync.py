"""The as-of rule: latest sample at or before t, gaps beyond max_age, never a future sample."""
import numpy as np
import pytest

from defi_core.timesync import AsofBuffer, asof_indices, find_gaps, fixed_rate_times


def test_asof_basic_and_exact_ties():
    samples = np.array([10, 20, 30])
    idx = asof_indices(samples, np.array([5, 10, 15, 20, 29, 30, 100]), max_age_ns=1000)
    assert idx.tolist() == [-1, 0, 0, 1, 1, 2, 2]
    # equal stamps: the later one wins
    assert asof_indices(np.array([10, 10, 20]), np.array([10]), 5).tolist() == [1]


def test_asof_max_age_makes_gaps():
    samples = np.array([0, 100, 1000])
    idx = asof_indices(samples, np.array([50, 150, 201, 999, 1000]), max_age_ns=100)
    assert idx.tolist() == [0, 1, -1, -1, 2]


def test_asof_never_returns_future_sample_with_skewed_rates():
    rng = np.random.default_rng(1)
    # a 7.3 Hz stream with jitter and two long gaps, queried at 30 Hz
    t = np.cumsum(rng.uniform(0.8, 1.2, size=200) * 1e9 / 7.3).astype(np.int64)
    t = np.sort(np.concatenate([t[:60], t[90:150] + 2_000_000_000, t[170:] + 5_000_000_000]))
    q = fixed_rate_times(int(t[0]) - 500_000_000, int(t[-1]) + 10**9, 30.0)
    max_age = 300_000_000
    idx = asof_indices(t, q, max_age)
    ok = idx >= 0
    assert ok.any() and (~ok).any()
    assert np.all(t[idx[ok]] <= q[ok]), 'picked a sample from the future'
    assert np.all(q[ok] - t[idx[ok]] <= max_age)
    # it is the LATEST such sample: the next one (if any) is in the future
    nxt = idx[ok] + 1
    has_next = nxt < t.size
    assert np.all(t[nxt[has_next]] > q[ok][has_next])
    # misses are exactly the queries with no sample in (q - max_age, q]
    for qi in q[~ok]:
        assert not np.any((t <= qi) & (t >= qi - max_age))


def test_asof_rejects_unsorted_and_handles_empty():
    with pytest.raises(ValueError, match='sorted'):
        asof_indices(np.array([2, 1]), np.array([3]), 10)
    assert asof_indices(np.array([], np.int64), np.array([1, 2]), 10).tolist() == [-1, -1]


def test_fixed_rate_times_and_gaps():
    q = fixed_rate_times(0, 1_000_000_000, 10.0)
    assert q.size == 11 and q[0] == 0 and q[-1] == 1_000_000_000 and np.all(np.diff(q) == 100_000_000)
    assert fixed_rate_times(5, 4, 10.0).size == 0
    assert find_gaps(np.array([0, 10, 20, 100, 110]), 15) == [(20, 100)]


def test_asof_buffer_live_lookup_out_of_order_and_capacity():
    buf = AsofBuffer(capacity=3)
    buf.push(10, 'a')
    buf.push(30, 'c')
    buf.push(20, 'b')   # late arrival goes to its place
    assert buf.asof(25) == (20, 'b')
    assert buf.asof(9) is None
    assert buf.asof(100, max_age_ns=50) is None
    assert buf.asof(60, max_age_ns=50) == (30, 'c')
    buf.push(40, 'd')
    assert len(buf) == 3 and buf.asof(15) is None and buf.latest() == (40, 'd')
