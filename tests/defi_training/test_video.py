"""Video source on real files written with PyAV: containers, sidecar instructions, resampling."""
import json

import numpy as np
import pytest

from defi_training.sources import Report
from defi_training.sources.video import decode_video, probe_video, read_video, video_instruction, write_video
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
