import numpy as np
import pytest
import torch

from core_helpers import make_batch, make_policy, make_stats, obs_from_batch, tiny_cfg

# Parameter-name prefixes that must train (and only these) under each switch setting.
GIDM_POLICY_PARTS = ('gidm.text_proj', 'gidm.st_pos', 'gidm.time_emb', 'gidm.action_queries', 'gidm.delta_proj',
                     'gidm.blocks', 'gidm.norm', 'gidm.pre_vq', 'gidm.vq.codebook', 'gidm.post_vq')
HEAD_PARTS = ('video_former.', 'action_head.')
GFDM_FEATURE_PARTS = ('gfdm.in_proj', 'gfdm.pos_spatial', 'gfdm.pos_time', 'gfdm.sigma_emb', 'gfdm.text_proj',
                      'gfdm.blocks')
CASES = {
    'default': (dict(), ('coupling.',) + GIDM_POLICY_PARTS + HEAD_PARTS),
    'gidm_not_pretrained': (dict(gidm_pretrained=False), ('coupling.',) + GIDM_POLICY_PARTS + HEAD_PARTS),
    'train_gfdm': (dict(train_gfdm=True), GFDM_FEATURE_PARTS + ('coupling.',) + GIDM_POLICY_PARTS + HEAD_PARTS),
    'gfdm_not_pretrained': (dict(gfdm_pretrained=False),
                            GFDM_FEATURE_PARTS + ('coupling.',) + GIDM_POLICY_PARTS + HEAD_PARTS),
    'mlp': (dict(idm_type='mlp'), ('coupling.', 'idm_ablation.') + HEAD_PARTS),
    'transformer': (dict(idm_type='transformer'), ('coupling.', 'idm_ablation.') + HEAD_PARTS),
    'adapter_only': (dict(idm_type='none'), HEAD_PARTS),
    'bc_scratch': (dict(backbone='scratch', idm_type='none'), ('image_encoder.',) + HEAD_PARTS),
    'context_skip': (dict(head_context_skip=True), ('coupling.',) + GIDM_POLICY_PARTS + HEAD_PARTS),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_gradients_reach_exactly_the_trainable_parts(case):
    overrides, expected_prefixes = CASES[case]
    cfg = tiny_cfg(state_dim=3, **overrides)
    policy = make_policy(cfg).train()
    batch = make_batch(cfg, 2)
    loss, logs = policy.compute_loss(batch)
    assert torch.isfinite(loss) and logs['loss'] == pytest.approx(float(loss.detach()))
    loss.backward()
    names = dict(policy.named_parameters())
    trainable = {n for n, p in names.items() if p.requires_grad}
    expected = {n for n in names if n.startswith(expected_prefixes)}
    if cfg.gfdm_trainable:    # the output head is not on the features path
        expected -= {n for n in names if n.startswith(('gfdm.final_ada', 'gfdm.out_proj', 'gfdm.skip_gain'))}
    assert trainable == expected, (sorted(trainable ^ expected))[:8]
    got_grad = {n for n, p in names.items() if p.grad is not None}
    assert got_grad == trainable, sorted(got_grad ^ trainable)[:8]
    assert any(p.grad.abs().sum() > 0 for n, p in names.items() if n.startswith('action_head.'))
    if cfg.gfdm_trainable:
        assert names['gfdm.in_proj.weight'].grad.abs().sum() > 0


def test_same_seed_same_output_and_generator_control():
    cfg = tiny_cfg()
    batch = make_batch(cfg, 2)
    obs = obs_from_batch(cfg, batch)
    a = make_policy(cfg, seed=7).eval().predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    b = make_policy(cfg, seed=7).eval().predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    c = make_policy(cfg, seed=8).eval().predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a, c)


def test_staged_api_equals_predict_action_chunk_and_units():
    cfg = tiny_cfg(cameras=('front', 'wrist'), state_dim=2, action_dim=3, horizon=6)
    policy = make_policy(cfg).eval()
    batch = make_batch(cfg, 3)
    obs = obs_from_batch(cfg, batch)
    chunk = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(1))
    lang = policy.encode_instruction(batch['task'])
    assert lang.shape == (3, cfg.text_dim)
    feats = policy.forward_features(batch['observation.images'], lang)
    codes, tokens = policy.latent_actions(feats, lang)
    staged = policy.decode_actions(feats, tokens, lang, state=batch['observation.state'],
                                   generator=torch.Generator().manual_seed(1))
    assert torch.allclose(chunk, staged, atol=1e-6)
    assert chunk.shape == (3, 6, 3)
    # robot units: the action head works in [-1, 1] and min/max stats map back to [-2, 3]
    assert chunk.min() >= -2 - 1.0 and chunk.max() <= 3 + 1.0
    norm_chunk = policy.normalizer.normalize('action', chunk)
    assert torch.allclose(policy.normalizer.unnormalize('action', norm_chunk), chunk, atol=1e-5)


def test_select_action_pops_a_chunk_queue_and_reset_clears_it():
    cfg = tiny_cfg(horizon=5, n_action_steps=3)
    policy = make_policy(cfg).eval()
    obs = obs_from_batch(cfg, make_batch(cfg, 2))
    calls = []
    policy.action_head.register_forward_hook(lambda *a: None)
    orig = policy.predict_action_chunk
    policy.predict_action_chunk = lambda o: calls.append(1) or orig(o, generator=torch.Generator().manual_seed(0))
    chunk = orig(obs, generator=torch.Generator().manual_seed(0))
    got = [policy.select_action(obs) for _ in range(4)]
    assert len(calls) == 2                       # 3 actions per chunk -> the 4th needs a new chunk
    assert all(a.shape == (2, cfg.action_dim) for a in got)
    for i in range(3):
        assert torch.allclose(got[i], chunk[:, i])
    policy.reset()
    policy.select_action(obs)
    assert len(calls) == 3


def test_missing_stats_fail_loudly():
    cfg = tiny_cfg()
    policy = make_policy(cfg, stats=False).eval()
    batch = make_batch(cfg, 1)
    with pytest.raises(RuntimeError, match='normalization statistics'):
        policy.predict_action_chunk(obs_from_batch(cfg, batch))
    with pytest.raises(RuntimeError, match='normalization statistics'):
        policy.compute_loss(batch)
    bad = make_stats(tiny_cfg(action_dim=2))
    with pytest.raises(ValueError, match='action_dim'):
        policy.set_normalization(bad)
    with pytest.raises(ValueError, match='observation.state'):
        make_policy(tiny_cfg(state_dim=2), stats=False).set_normalization(make_stats(cfg))


def test_observation_errors_name_the_key():
    cfg = tiny_cfg(cameras=('front', 'wrist'))
    policy = make_policy(cfg).eval()
    obs = obs_from_batch(cfg, make_batch(cfg, 1))
    del obs['observation.images.wrist']
    with pytest.raises(KeyError, match='observation.images.wrist'):
        policy.predict_action_chunk(obs)
    obs = obs_from_batch(cfg, make_batch(cfg, 2))
    obs['task'] = ['only one']
    with pytest.raises(ValueError, match='task'):
        policy.predict_action_chunk(obs)


def test_action_loss_decreases_when_overfitting_one_batch():
    cfg = tiny_cfg(state_dim=2)
    policy = make_policy(cfg).train()
    batch = make_batch(cfg, 4)
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=2e-3)

    def evaluate():
        policy.eval()               # the VQ's running statistics must not move while evaluating
        torch.manual_seed(99)
        with torch.no_grad():
            # fixed mid-range noise levels: the log-normal draw makes single evaluations noisy
            loss = sum(policy.compute_loss(batch, sigma=s)[1]['action_loss'] for s in (0.3, 1.0, 3.0))
        policy.train()
        return loss
    before = evaluate()
    for i in range(40):
        torch.manual_seed(i)
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert after < 0.6 * before, (before, after)
    # the frozen GFDM did not move
    fresh = make_policy(cfg)
    assert torch.equal(fresh.gfdm.in_proj.weight, policy.gfdm.in_proj.weight)


def test_padded_actions_do_not_count():
    cfg = tiny_cfg()
    policy = make_policy(cfg).eval()
    head = policy.action_head
    head.denoise = lambda x, sigma, ctx: torch.zeros_like(x)     # error = the clean actions
    actions = torch.rand(2, cfg.horizon, cfg.action_dim)
    is_pad = torch.zeros(2, cfg.horizon, dtype=torch.bool)
    is_pad[:, -3:] = True
    ctx = torch.zeros(2, 1, cfg.head_dim)
    torch.manual_seed(0)
    loss_a, mse_a = head.loss(ctx, actions, is_pad)
    garbage = actions.clone()
    garbage[:, -3:] = 1e3
    torch.manual_seed(0)
    loss_b, mse_b = head.loss(ctx, garbage, is_pad)
    assert float(loss_a) == pytest.approx(float(loss_b)) and np.isfinite(float(loss_a))
    assert float(mse_a) == pytest.approx(float((actions[:, :-3] ** 2).mean()), rel=1e-5)


def test_random_shift_moves_each_sample_by_at_most_pad_pixels():
    import torch

    from defi_core.policy import random_shift
    # a single bright pixel per sample: after the shift it is still there, at most 2 px away
    x = torch.zeros(6, 2, 3, 16, 16, dtype=torch.uint8)
    x[:, :, :, 8, 8] = 255
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.uint8
    moved = 0
    for b in range(6):
        r, c = (y[b, 0, 0] == 255).nonzero()[0].tolist()
        assert abs(r - 8) <= 2 and abs(c - 8) <= 2
        assert torch.equal(y[b, 0], y[b, 1])         # every view of a sample moves together
        moved += (r, c) != (8, 8)
    assert moved > 0
    assert torch.equal(random_shift(x, 0), x)
