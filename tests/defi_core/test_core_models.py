import pytest
import torch

from core_helpers import make_batch, tiny_cfg
from defi_core.config import preset
from defi_core.models.action_head import ActionHead
from defi_core.models.blocks import edm_scalings, karras_sigmas
from defi_core.models.gfdm import GFDM
from defi_core.models.gidm import GIDM, causal_temporal_mask
from defi_core.models.video_former import VideoFormer


def test_edm_preconditioning_and_schedule():
    sigma = torch.tensor([0.002, 0.5, 80.0])
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, 0.5)
    assert torch.allclose(c_skip + 0, 0.25 / (sigma ** 2 + 0.25))
    assert torch.allclose(c_in, 1 / (sigma ** 2 + 0.25).sqrt())
    assert torch.allclose(c_noise, sigma.log() / 4)
    # at sigma -> 0 the denoiser is the identity; at large sigma the network output dominates
    assert c_skip[0] > 0.99 and c_out[0] < 0.01 and c_skip[2] < 1e-4
    s = karras_sigmas(10, 0.002, 80.0)
    assert len(s) == 11 and s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002) and s[-1] == 0
    assert torch.all(s[:-1] > s[1:])


@pytest.mark.parametrize('cameras', [('front',), ('front', 'wrist')])
def test_gfdm_shapes_features_and_sampling(cameras):
    cfg = tiny_cfg(cameras=cameras)
    torch.manual_seed(0)
    gfdm = GFDM(cfg).eval()
    batch = make_batch(cfg, b=2)
    lang = gfdm.encode_text(batch['task'])
    feats = gfdm.features(batch['observation.images'], lang)
    assert feats.shape == (2, cfg.num_future_frames, cfg.tokens_per_frame, cfg.gfdm_dim)
    # ONE deterministic pass: same input -> same features; another frame -> other features
    assert torch.equal(feats, gfdm.features(batch['observation.images'], lang))
    other = gfdm.features(batch['observation.images'].flip(0), lang)
    assert not torch.allclose(feats, other)
    frames = gfdm.sample(batch['observation.images'], lang, steps=2)
    assert frames.shape == (2, cfg.num_future_frames, len(cameras), 3, 64, 64)
    assert frames.min() >= 0 and frames.max() <= 1
    # float [0,1] input and other resolutions are accepted
    f2 = gfdm.features(batch['observation.images'].float() / 255, lang)
    assert torch.allclose(f2, feats, atol=1e-5)
    big = torch.nn.functional.interpolate(batch['observation.images'][:, 0].float(), size=96).to(torch.uint8)
    assert gfdm.features(big[:, None].expand(-1, len(cameras), -1, -1, -1), lang).shape == feats.shape


def test_gfdm_sample_steps_yields_once_per_step_and_ends_at_sample():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    gfdm = GFDM(cfg).eval()
    batch = make_batch(cfg, b=2)
    lang = gfdm.encode_text(batch['task'])
    images = batch['observation.images']
    steps = list(gfdm.sample_steps(images, lang, steps=3, generator=torch.Generator().manual_seed(5)))
    assert len(steps) == 3
    assert all(s.shape == (2, cfg.num_future_frames, 1, 3, 64, 64) for s in steps)
    assert not torch.equal(steps[0], steps[-1])            # the sample changes from step to step
    final = gfdm.sample(images, lang, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(steps[-1], final)                    # bit-identical to sample()


def test_gfdm_feature_layer_is_a_partial_pass():
    cfg = tiny_cfg(gfdm_depth=3, gfdm_feature_layer=1)
    torch.manual_seed(0)
    gfdm = GFDM(cfg).eval()
    calls = []
    for blk in gfdm.blocks:
        blk.register_forward_hook(lambda *a: calls.append(1))
    gfdm.features(make_batch(cfg, 1)['observation.images'], gfdm.encode_text(['x']))
    assert len(calls) == 1


def test_gidm_causal_mask_frame_t_never_sees_frame_t_plus_k():
    m = causal_temporal_mask(3, 2, 'cpu')
    # order: lang, f0 x3, f1 x3, q x2
    assert m[1:4, 4:].sum() == 0          # frame t sees neither frame t+k nor the queries
    assert m[4:7, 1:7].all() and m[4:7, 7:].sum() == 0
    assert m[7:, :].all()                 # queries see everything
    # behaviourally: the frame-t stream is independent of frame t+k
    cfg = tiny_cfg()
    torch.manual_seed(0)
    gidm = GIDM(cfg).eval()
    b = make_batch(cfg, 2)
    t0, t1 = gidm.embed_frames(b['observation.images']), gidm.embed_frames(b['gap.images'])
    outs = []
    hook = gidm.blocks[-1].register_forward_hook(lambda mod, inp, out: outs.append(out))
    gidm.encode_tokens(t0, t1, b['task'])
    gidm.encode_tokens(t0, t1.flip(0), b['task'])
    hook.remove()
    n = cfg.tokens_per_frame
    assert torch.allclose(outs[0][:, 1:1 + n], outs[1][:, 1:1 + n])
    assert not torch.allclose(outs[0][:, -4:], outs[1][:, -4:])


def test_gidm_encode_shapes_and_vq():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    gidm = GIDM(cfg).eval()
    b = make_batch(cfg, 8, seed=3)
    codes, tokens = gidm.encode(b['observation.images'], b['gap.images'], b['task'])
    assert codes.shape == (8, 4) and codes.dtype == torch.long
    assert tokens.shape == (8, 4, cfg.gidm_dim)
    assert codes.min() >= 0 and codes.max() < cfg.codebook_size
    assert codes.unique().numel() > 1
    # the first training batch sets the codebook from (centered) encoder outputs
    assert int(gidm.vq.initialized) == 0
    gidm.train()
    gidm.loss(b)
    assert int(gidm.vq.initialized) == 1 and gidm.vq.center.abs().sum() > 0
    gidm.eval()
    codes2, _ = gidm.encode(b['observation.images'], b['gap.images'], b['task'])
    assert codes2.unique().numel() >= 4     # varied inputs spread over the codebook


def test_vq_straight_through_commitment_and_dead_code_restart():
    cfg = tiny_cfg(dead_code_threshold=0.05, code_usage_decay=0.5)
    torch.manual_seed(0)
    gidm = GIDM(cfg)
    vq = gidm.vq
    z = torch.randn(64, 4, cfg.code_dim, requires_grad=True)
    zq, codes, loss = vq(z)
    assert loss > 0
    zq.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0          # straight-through gradient
    # codes nobody picks die and restart near encoder outputs
    before = vq.codebook.detach().clone()
    vq.train()
    z2 = torch.randn(1, 8, cfg.code_dim) * 0.01 + before[0]       # everything maps to code 0
    for _ in range(5):
        vq(z2)
    changed = (vq.codebook.detach() - before).abs().sum(1) > 0
    assert changed[1:].any() and not changed[0]


def test_video_former_and_action_head_shapes():
    cfg = tiny_cfg(vf_queries_per_frame=3)
    vf = VideoFormer(cfg)
    feats = torch.randn(2, cfg.num_future_frames, cfg.tokens_per_frame, cfg.gfdm_dim)
    tok = vf(feats)
    assert tok.shape == (2, cfg.num_future_frames * 3, cfg.vf_dim)
    with pytest.raises(ValueError, match='VideoFormer'):
        vf(feats[:, :2])
    head = ActionHead(cfg, cfg.gidm_dim)
    ctx = head.encode_context(torch.randn(2, cfg.text_dim), tok, torch.randn(2, 4, cfg.gidm_dim))
    assert ctx.shape == (2, 1 + tok.shape[1] + 4, cfg.head_dim)
    calls = []
    head.decoder[0].register_forward_hook(lambda *a: calls.append(1))
    out = head.sample(ctx)
    assert out.shape == (2, cfg.horizon, cfg.action_dim) and torch.isfinite(out).all()
    assert len(calls) == cfg.sampling_steps == 10          # Euler: one network call per step
    calls.clear()
    head.sample(ctx, steps=4)
    assert len(calls) == 4


def test_context_skip_adds_a_linear_map_of_the_mean_context():
    """head_context_skip: the decoder's output plus a linear map of the mean context token, so the
    chunk moves with the context even where the decoder's output does not."""
    torch.manual_seed(0)
    head = ActionHead(tiny_cfg(head_context_skip=True), None)
    assert ActionHead(tiny_cfg(), None).context_skip is None          # off by default
    ctx = torch.randn(2, 5, head.cfg.head_dim)
    with torch.no_grad():
        head.action_out.weight.zero_()
        head.action_out.bias.zero_()
    skip = head.context_skip(ctx.mean(1)).view(2, head.cfg.horizon, head.cfg.action_dim)
    x, sigma = torch.randn(2, head.cfg.horizon, head.cfg.action_dim), torch.full((2,), 3.0)
    c_skip, c_out, _, _ = edm_scalings(sigma, head.cfg.action_sigma_data)
    torch.testing.assert_close(head.denoise(x, sigma, ctx), c_skip.view(-1, 1, 1) * x + c_out.view(-1, 1, 1) * skip)
    loss, _ = head.loss(ctx, torch.rand(2, head.cfg.horizon, head.cfg.action_dim))
    loss.backward()
    assert head.context_skip.weight.grad.abs().sum() > 0


def test_action_noise_scale_zero_makes_the_sampler_deterministic():
    """action_noise_scale 0: every draw of the same context gives the same chunk, the sampler
    started from zero noise (the shipped checkpoint's setting); 1 samples; 0.5 lies in between."""
    torch.manual_seed(0)
    ref = ActionHead(tiny_cfg(), None).state_dict()
    ctx = torch.randn(1, 5, 64)
    draws = {}
    for scale in (0.0, 0.5, 1.0):
        head = ActionHead(tiny_cfg(action_noise_scale=scale), None)
        head.load_state_dict(ref)
        with torch.no_grad():
            draws[scale] = torch.stack([head.sample(ctx, generator=torch.Generator().manual_seed(g))
                                        for g in range(4)])
    spread = {k: float(v.std(0).mean()) for k, v in draws.items()}
    assert spread[0.0] == 0.0 and 0.0 < spread[0.5] < spread[1.0]
    zero_start = ActionHead(tiny_cfg(), None)
    zero_start.load_state_dict(ref)
    cfg = zero_start.cfg
    with torch.no_grad():
        start = zero_start.sample(ctx, noise=torch.zeros(1, cfg.horizon, cfg.action_dim))
    torch.testing.assert_close(draws[0.0][0], start)
    with pytest.raises(ValueError, match='action_noise_scale'):
        tiny_cfg(action_noise_scale=-1.0)


def _overfit(module_loss, params, steps=40, lr=2e-3, eval_loss=None):
    opt = torch.optim.Adam(params, lr=lr)

    def evaluate():
        torch.manual_seed(123)      # same sigmas and noise before and after training
        with torch.no_grad():
            return float((eval_loss or module_loss)()[0])
    before = evaluate()
    for i in range(steps):
        torch.manual_seed(i)
        loss, logs = module_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, evaluate(), logs


def test_gfdm_loss_decreases_on_one_batch():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    gfdm = GFDM(cfg)
    batch = make_batch(cfg, 2)
    # evaluated at fixed sigmas (one log-normal draw is too noisy to compare): 2.0 needs the
    # content, 0.2 needs the per-pixel noise cancelled through the skip-gain path
    for sigma in (2.0, 0.2):
        torch.manual_seed(0)
        gfdm = GFDM(cfg)
        before, after, logs = _overfit(lambda gfdm=gfdm: gfdm.loss(batch), gfdm.parameters(),
                                       eval_loss=lambda gfdm=gfdm, sigma=sigma: gfdm.loss(batch, sigma=sigma))
        assert after < 0.7 * before, (sigma, before, after)
    assert 'gfdm_mse' in logs


def test_gidm_loss_decreases_on_one_batch():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    gidm = GIDM(cfg)
    batch = make_batch(cfg, 8, seed=5)
    before, after, logs = _overfit(lambda: gidm.loss(batch), gidm.parameters())
    assert after < 0.7 * before, (before, after)
    assert {'gidm_token_loss', 'gidm_pixel_loss', 'gidm_vq_loss', 'gidm_codes_used'} <= set(logs)


@pytest.mark.parametrize('name', ['tiny', 'base', 'large'])
def test_every_preset_shapes(name):
    from core_helpers import make_policy, obs_from_batch
    over = dict(sampling_steps=2) if name == 'large' else {}
    cfg = preset(name, text_encoder='hash', **over)
    policy = make_policy(cfg).eval()
    batch = make_batch(cfg, 1)
    lang = policy.encode_instruction(batch['task'])
    feats = policy.forward_features(batch['observation.images'], lang)
    assert feats.shape == (1, cfg.num_future_frames, cfg.tokens_per_frame, cfg.gfdm_dim)
    codes, tokens = policy.latent_actions(feats, lang)
    assert codes.shape == (1, cfg.num_action_queries) and tokens.shape == (1, cfg.num_action_queries, cfg.gidm_dim)
    chunk = policy.predict_action_chunk(obs_from_batch(cfg, batch))
    assert chunk.shape == (1, cfg.horizon, cfg.action_dim) and torch.isfinite(chunk).all()
