"""Evaluation statistics, results JSON/markdown, prediction strip PNG and episode mp4."""
import json
import math

import numpy as np
import pytest

from defi_sim.evaluation import (
    EpisodeResult,
    PredictionRecord,
    bootstrap_mean_interval,
    latency_summary,
    load_results,
    predicted_frames_for_view,
    results_markdown,
    save_prediction_strips,
    summarize,
    validate_results,
    wilson_interval,
    write_results,
    write_video,
)

# ------------------------------------------------------------------------------ statistics

@pytest.mark.parametrize('k,n,lo,hi', [
    (8, 10, 0.4901625, 0.9433178),   # textbook values of the Wilson score interval
    (0, 10, 0.0, 0.2775328),
    (10, 10, 0.7224672, 1.0),
    (1, 2, 0.0945312, 0.9054688),
    (50, 100, 0.4038315, 0.5961685),
])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-6)


def _wilson_closed_form(k, n, z=1.959963984540054):
    """The Wilson score interval written out (the project's formula before scipy.stats computed it)."""
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def test_wilson_interval_equals_the_closed_form_for_every_count_up_to_60():
    for n in range(1, 61):
        for k in range(n + 1):
            got = wilson_interval(k, n)
            assert type(got[0]) is float and type(got[1]) is float       # JSON-ready, not numpy scalars
            # the same formula evaluated in a different order: equal up to float rounding (a few ulp)
            assert got == pytest.approx(_wilson_closed_form(k, n), rel=0, abs=1e-15), (k, n)
            assert (got[0] == 0.0) == (k == 0) and (got[1] == 1.0) == (k == n)  # exact at the extremes


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError, match='successes <= n'):
        wilson_interval(3, 2)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_matches_explicit_resampling_of_episodes():
    outcomes = {'a': [1, 0, 1, 1, 1, 0, 1, 1], 'b': [0, 0, 1, 0, 0, 1]}
    mean, lo, hi = bootstrap_mean_interval(outcomes, resamples=20000, seed=1)
    assert mean == pytest.approx((6 / 8 + 2 / 6) / 2)
    # the same stratified bootstrap done the slow way: redraw episode indices within each task
    rng = np.random.default_rng(7)
    a, b = np.array(outcomes['a'], float), np.array(outcomes['b'], float)
    means = [(a[rng.integers(0, a.size, a.size)].mean() + b[rng.integers(0, b.size, b.size)].mean()) / 2
             for _ in range(20000)]
    ref_lo, ref_hi = np.quantile(means, [0.025, 0.975])
    assert lo == pytest.approx(ref_lo, abs=0.035) and hi == pytest.approx(ref_hi, abs=0.035)
    assert lo < mean < hi
    # deterministic for a seed
    assert bootstrap_mean_interval(outcomes, seed=3) == bootstrap_mean_interval(outcomes, seed=3)


def test_bootstrap_single_episode_task_is_a_constant_of_the_mean():
    # one episode always redraws itself: the mean's interval is the other task's, mapped by (x + 1) / 2
    a = [1, 0, 1, 0, 0, 1, 1]
    _, lo_a, hi_a = bootstrap_mean_interval({'a': a}, seed=4)
    mean, lo, hi = bootstrap_mean_interval({'a': a, 'b': [1]}, seed=4)
    assert mean == pytest.approx((4 / 7 + 1) / 2)
    assert (lo, hi) == pytest.approx(((lo_a + 1) / 2, (hi_a + 1) / 2), abs=1e-12)
    assert lo_a < 4 / 7 < hi_a


def test_bootstrap_degenerate_and_empty():
    assert bootstrap_mean_interval({'a': [1, 1], 'b': [1]}) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match='at least one episode'):
        bootstrap_mean_interval({'a': []})


def test_latency_summary():
    s = latency_summary(range(1, 101))
    assert s['median'] == pytest.approx(50.5)
    assert s['p95'] == pytest.approx(95.05)
    assert s['count'] == 100
    assert latency_summary([])['count'] == 0


# ------------------------------------------------------------------------------ results files

def _episodes():
    return [EpisodeResult('reach-v3', 0, True, 40, [10.0, 12.0]),
            EpisodeResult('reach-v3', 1, True, 60, [11.0]),
            EpisodeResult('reach-v3', 2, False, 100, [30.0]),
            EpisodeResult('push-v3', 0, False, 100, [9.0, 9.5]),
            EpisodeResult('push-v3', 1, True, 80, [])]


def test_summarize_schema_and_values(tmp_path):
    results = summarize(_episodes(), checkpoint='models/x', mode='inprocess')
    assert list(results) == ['tasks', 'mean_success', 'ci95', 'latency_ms', 'checkpoint', 'mode']
    reach, push = results['tasks']['reach-v3'], results['tasks']['push-v3']
    assert reach == {'success': pytest.approx(2 / 3), 'ci95': list(wilson_interval(2, 3)),
                     'episodes': 3, 'mean_length': pytest.approx(200 / 3)}
    assert push['success'] == 0.5 and push['episodes'] == 2 and push['mean_length'] == 90.0
    assert results['mean_success'] == pytest.approx((2 / 3 + 0.5) / 2)
    lo, hi = results['ci95']
    assert 0 <= lo < results['mean_success'] < hi <= 1
    assert results['latency_ms']['count'] == 6
    assert results['latency_ms']['median'] == pytest.approx(10.5)

    json_path, md_path = write_results(results, tmp_path / 'out')
    back = load_results(json_path)
    assert back == json.loads(json.dumps(results))
    md = md_path.read_text()
    assert '| reach-v3 | 66.7% |' in md and '| **mean** | **58.3%** |' in md
    assert 'median 10.5 ms' in md
    assert md == results_markdown(results)


def test_validate_results_names_the_bad_field():
    results = summarize(_episodes(), checkpoint='c', mode='ros')
    broken = json.loads(json.dumps(results))
    broken['tasks']['push-v3']['success'] = 1.5
    with pytest.raises(ValueError, match=r"tasks\['push-v3'\]\.success"):
        validate_results(broken)
    broken = json.loads(json.dumps(results))
    broken['mode'] = 'gazebo'
    with pytest.raises(ValueError, match='mode'):
        validate_results(broken)
    broken = json.loads(json.dumps(results))
    del broken['tasks']['reach-v3']['episodes']
    with pytest.raises(ValueError, match='episodes'):
        validate_results(broken)
    broken = json.loads(json.dumps(results))
    broken['tasks']['push-v3']['ci95'] = [0.6, 0.9]              # the rate 0.5 lies outside
    with pytest.raises(ValueError, match=r"tasks\['push-v3'\]\.ci95: need 0 <= lo <= 0.5"):
        validate_results(broken)
    broken = json.loads(json.dumps(results))
    broken['mean_success'] = 'high'
    with pytest.raises(ValueError, match=r"results\.mean_success: 'high' outside \[0, 1\]"):
        validate_results(broken)
    broken = json.loads(json.dumps(results))
    del broken['latency_ms']['p95']
    with pytest.raises(ValueError, match=r'results\.latency_ms: keys'):
        validate_results(broken)
    broken = json.loads(json.dumps(results))
    broken['tasks']['reach-v3'] = [1, 2]
    with pytest.raises(ValueError, match=r"results\.tasks\['reach-v3'\]: keys"):
        validate_results(broken)


# ------------------------------------------------------------------------------ pictures

def test_prediction_strip_png_layout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w, t = 24, 32, 3
    frame = lambda: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    predicted = rng.random((1, t, 1, 3, h, w)).astype(np.float32)   # gfdm.sample layout, one view
    pred_frames = predicted_frames_for_view(predicted)
    assert len(pred_frames) == t and pred_frames[0].shape == (h, w, 3)
    rec1 = PredictionRecord(step=5, current=frame(), predicted=pred_frames,
                            real=[frame() for _ in range(t)], offsets=[2, 4, 6], task='reach-v3')
    real_short = [frame()]  # the episode ended after one more frame
    rec2 = PredictionRecord(step=9, current=frame(), predicted=pred_frames, real=real_short,
                            offsets=[2, 4, 6])
    path = save_prediction_strips(tmp_path / 'strip.png', [rec1, rec2], scale=2)
    img = np.asarray(Image.open(path).convert('RGB'))
    label_w, pad, header = 80, 2, 18
    strip_h = 2 * header + 2 * (2 * h + pad)
    assert img.shape == (2 * strip_h, label_w + (1 + t) * (2 * w + pad), 3)
    # first strip, 'predicted' row, column t+2: the GFDM frame scaled x2 (nearest neighbour)
    y0, x0 = 2 * header, label_w + 1 * (2 * w + pad)
    np.testing.assert_array_equal(img[y0:y0 + 2 * h:2, x0:x0 + 2 * w:2], pred_frames[0])
    # 'real' row, column t+2: the real frame
    y1 = y0 + 2 * h + pad
    np.testing.assert_array_equal(img[y1:y1 + 2 * h:2, x0:x0 + 2 * w:2], rec1.real[0])
    # both rows start with the current frame
    np.testing.assert_array_equal(img[y0:y0 + 2 * h:2, label_w:label_w + 2 * w:2], rec1.current)
    np.testing.assert_array_equal(img[y1:y1 + 2 * h:2, label_w:label_w + 2 * w:2], rec1.current)
    # second strip: missing real frames drawn grey
    x_last = label_w + 3 * (2 * w + pad)
    assert (img[strip_h + y1:strip_h + y1 + 2 * h, x_last:x_last + 2 * w] == 160).all()
    # the row labels are drawn (dark pixels in the label column of each row)
    assert (img[y0:y0 + 2 * h, :label_w] < 100).any() and (img[y1:y1 + 2 * h, :label_w] < 100).any()


def test_write_video_roundtrip_with_pyav(tmp_path):
    import av

    frames = [np.full((33, 48, 3), 10 * i, dtype=np.uint8) for i in range(12)]  # odd height
    path = write_video(tmp_path / 'ep.mp4', frames, fps=10)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == 'h264'
        decoded = [f.to_ndarray(format='rgb24') for f in container.decode(stream)]
    assert len(decoded) == 12
    assert decoded[0].shape == (34, 48, 3)
    # brightness ramps like the input (h264 is lossy; means are close)
    means = [d[:33].mean() for d in decoded]
    assert means == pytest.approx([10 * i for i in range(12)], abs=4)
    with pytest.raises(ValueError, match='frame 1'):
        write_video(tmp_path / 'bad.mp4', [frames[0], np.zeros((8, 8, 3), np.uint8)])
