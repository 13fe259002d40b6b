"""Video source on real files written with PyAV: containers, sidecar instructions, resampling."""
import json
from itertools import pairwise

import numpy as np
import pytest

from defi_training.sources import Report
from defi_training.sources.video import (
    VideoWriter,
    decode_video,
    probe_video,
    read_video,
    video_instruction,
    write_video,
)
from defi_training.topic_map import TopicMap

TM = TopicMap(image_size=16, fps=10, action={'source': 'none', 'topic': None}, state={'topic': None})


def gray_frames(n, size=32, step=20):
    """Frame i is uniformly gray at level i*step: survives h264/vp9 well, so indices are checkable."""
    return np.stack([np.full((size, size, 3), (i * step) % 256, np.uint8) for i in range(n)])


def _levels(frames, step=20):
    return np.round(frames[:, 8, 8].mean(axis=1) / step).astype(int)


@pytest.mark.parametrize('name, codec', [('a.mp4', 'libx264'), ('b.webm', 'libvpx-vp9'), ('c.avi', 'mpeg4')])
def test_containers_decode_and_resample(tmp_path, name, codec):
    path = tmp_path / name
    write_video(path, gray_frames(12), fps=20, codec=codec)
    info = probe_video(path)
    assert (info['width'], info['height']) == (32, 32) and abs(info['fps'] - 20) < 1e-6
    frames, times = decode_video(path, 16)
    assert frames.shape == (12, 16, 16, 3) and np.allclose(np.diff(times), 0.05, atol=1e-3)
    report = Report(quiet=True)
    eps = list(read_video(path, TM, report))
    assert not report.skipped and len(eps) == 1
    ep = eps[0]
    # 20 fps -> 10 fps with the as-of rule: source frames 0, 2, 4, ...
    assert ep.length == 6 and ep.frames['front'].shape == (6, 16, 16, 3)
    assert _levels(ep.frames['front']).tolist() == [0, 2, 4, 6, 8, 10]
    assert ep.action is None and ep.state is None and ep.task == ''


def test_slower_video_repeats_frames_never_looks_ahead(tmp_path):
    path = tmp_path / 'slow.mp4'
    write_video(path, gray_frames(8), fps=4)
    eps = list(read_video(path, TopicMap(image_size=16, fps=10, max_age_s=0.3), Report(quiet=True)))
    # frames at 0, .25, .5, ...: queries at 0, .1, .2 take frame 0; .3 and .4 take frame 1 ...
    assert _levels(eps[0].frames['front']).tolist()[:8] == [0, 0, 0, 1, 1, 2, 2, 2]


def test_sidecar_json_txt_and_csv(tmp_path):
    for name in ('j.mp4', 't.mp4', 'c.mp4', 'none.mp4'):
        write_video(tmp_path / name, gray_frames(4, size=16), fps=10)
    (tmp_path / 'j.json').write_text(json.dumps({'instruction': 'open the drawer'}))
    (tmp_path / 't.txt').write_text('close the drawer\n')
    (tmp_path / 'instructions.csv').write_text('file,instruction\nc.mp4,push the button\n')
    assert video_instruction(tmp_path / 'j.mp4') == 'open the drawer'
    assert video_instruction(tmp_path / 't.mp4') == 'close the drawer'
    assert video_instruction(tmp_path / 'c.mp4') == 'push the button'
    assert video_instruction(tmp_path / 'none.mp4') is None
    tm = TopicMap(image_size=16, task={'topic': None, 'default': 'do it'})
    ep = next(read_video(tmp_path / 'none.mp4', tm, Report(quiet=True)))
    assert ep.task == 'do it'
    ep = next(read_video(tmp_path / 'c.mp4', tm, Report(quiet=True), camera='scene'))
    assert ep.task == 'push the button' and list(ep.frames) == ['scene']


def test_bad_sidecar_and_bad_video_are_reported(tmp_path):
    write_video(tmp_path / 'x.mp4', gray_frames(4, size=16), fps=10)
    (tmp_path / 'x.json').write_text('{not json')
    report = Report(quiet=True)
    assert list(read_video(tmp_path / 'x.mp4', TM, report)) == []
    assert 'invalid JSON' in report.skipped[0]['reason'] and report.skipped[0]['path'].endswith('x.mp4')
    (tmp_path / 'y.webm').write_bytes(b'\x1aE\xdf\xa3' + b'\x00' * 64)
    assert list(read_video(tmp_path / 'y.webm', TM, report)) == []
    assert 'unreadable video' in report.skipped[1]['reason']


def test_h264_needs_even_size(tmp_path):
    with pytest.raises(ValueError, match='even'):
        write_video(tmp_path / 'odd.mp4', np.zeros((2, 15, 16, 3), np.uint8), fps=10)


def test_video_writer_appends_across_calls_with_one_frame_per_tick_and_short_gop(tmp_path):
    import av
    path = tmp_path / 'two_episodes.mp4'
    with VideoWriter(path, 32, 32, fps=10, gop=2) as writer:      # episode after episode, as write_lerobot does
        for img in gray_frames(5):
            writer.write(img)
        assert writer.frames == 5
        for img in gray_frames(4, step=30):
            writer.write(img)
    frames, times = decode_video(path)
    assert frames.shape == (9, 32, 32, 3)
    np.testing.assert_allclose(times, np.arange(9) / 10, atol=1e-6)
    assert _levels(frames[:5]).tolist() == [0, 1, 2, 3, 4] and _levels(frames[5:], step=30).tolist() == [0, 1, 2, 3]
    with av.open(str(path)) as c:
        keys = [f.key_frame for f in c.decode(c.streams.video[0])]
    assert keys[0] and not any(not a and not b for a, b in pairwise(keys))   # a keyframe every <= 2 frames


def test_video_writer_rejects_a_frame_of_another_size_and_aborts_without_flushing(tmp_path):
    with pytest.raises(ValueError, match=r'frame 1 has shape \(16, 16, 3\), expected \(32, 32, 3\)'):
        with VideoWriter(tmp_path / 'x.mp4', 32, 32, fps=10) as writer:
            writer.write(gray_frames(1)[0])
            writer.write(gray_frames(1, size=16)[0])
    writer.close()                                                # closing again does nothing
    with pytest.raises(ValueError, match='even'):
        VideoWriter(tmp_path / 'odd.mp4', 15, 16, fps=10)
    assert not (tmp_path / 'odd.mp4').exists()


def test_truncated_video_gives_a_warning(tmp_path, capsys):
    path = tmp_path / 'cut.webm'
    write_video(path, gray_frames(40), fps=10, codec='libvpx-vp9')
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    eps = list(read_video(path, TM, Report()))
    err = capsys.readouterr().err
    assert len(eps) == 1 and eps[0].length < 40
    assert f'WARNING {path}: decoded ' in err and 'of the 4.00 s its header declares (truncated file?)' in err
    write_video(tmp_path / 'whole.webm', gray_frames(40), fps=10, codec='libvpx-vp9')
    assert len(list(read_video(tmp_path / 'whole.webm', TM, Report()))) == 1
    assert 'WARNING' not in capsys.readouterr().err


def _video_with_gap(path, times_ms):
    """h264 frames stamped at times_ms (a pause in the recording leaves a hole in the pts)."""
    from fractions import Fraction

    import av
    frames = gray_frames(len(times_ms))
    with av.open(str(path), mode='w') as c:
        s = c.add_stream('libx264', rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, 'yuv420p'
        s.codec_context.time_base = Fraction(1, 1000)
        for img, t in zip(frames, times_ms, strict=True):
            vf = av.VideoFrame.from_ndarray(img, format='rgb24')
            vf.pts, vf.time_base = t, Fraction(1, 1000)
            for packet in s.encode(vf):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


@pytest.mark.parametrize('policy', ['split', 'drop'])
def test_gap_policy_applies_to_videos(tmp_path, capsys, policy):
    path = tmp_path / 'paused.mkv'
    _video_with_gap(path, list(range(0, 1000, 100)) + list(range(2000, 3000, 100)))
    tm = TopicMap(image_size=16, fps=10, gap_policy=policy, action={'source': 'none', 'topic': None},
                  state={'topic': None})
    eps = list(read_video(path, tm, Report()))
    err = capsys.readouterr().err
    # as-of rule: the frame at 0.9 s serves until 1.2 s (max_age_s), then nothing until 2.0 s
    assert f'WARNING {path}: 1 gap(s) without a frame for over max_age_s=0.3 s (after 1.20 s)' in err, err
    if policy == 'split':
        assert [e.length for e in eps] == [13, 10] and 'split into 2 episodes' in err
        assert [_levels(e.frames['front'])[0] for e in eps] == [0, 10]
        assert all(np.allclose(np.diff(e.timestamps), 0.1) for e in eps)       # no time jump inside
    else:
        assert [e.length for e in eps] == [23] and 'timestamps jump' in err
