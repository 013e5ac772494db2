"""The fusion network and its parts: shapes, masking, attention, locality of the TCNs."""

import torch

from vafusion.models.components.cross_attention import CrossModalAttention
from vafusion.models.components.tcn import MultiScaleTCN
from vafusion.models.fusion import BranchSpec, FusionConfig, FusionNet


def _net(branches=(("visual", 16), ("vggish", 8), ("logmel", 8))):
    cfg = FusionConfig(tcn_channels=8, attn_dim=12, head_hidden=10, attn_span=0)
    return FusionNet(cfg, [BranchSpec(n, d) for n, d in branches]).eval()


def _inputs(net, b=2, t=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {s.name: torch.randn(b, t, s.dim, generator=g) for s in net.specs}
    valid = {s.name: torch.ones(b, t, dtype=torch.bool) for s in net.specs}
    return feats, valid


def test_multiscale_tcn_concatenates_three_scales_and_keeps_length():
    tcn = MultiScaleTCN(5, 7, (3, 5, 7), (1, 2, 4))
    y = tcn(torch.randn(2, 33, 5))
    assert y.shape == (2, 33, 21)
    assert [t.receptive_field for t in tcn.tcns] == [1 + 2 * 2 * 7, 1 + 2 * 4 * 7, 1 + 2 * 6 * 7]


def test_tcn_is_local_within_its_receptive_field():
    tcn = MultiScaleTCN(3, 4, (3,), (1, 2)).eval()
    x = torch.randn(1, 60, 3)
    y = tcn(x)
    x2 = x.clone()
    x2[0, 59] += 10.0
    y2 = tcn(x2)
    rf = tcn.tcns[0].receptive_field
    assert torch.allclose(y[0, : 59 - rf // 2], y2[0, : 59 - rf // 2])
    assert not torch.allclose(y[0, 59], y2[0, 59])


def test_fusion_output_shape_and_concat_width():
    net = _net()
    feats, valid = _inputs(net)
    assert net(feats, valid).shape == (2, 40, 2)
    # [F_v (3*8), attn(v, vggish) (12), attn(v, logmel) (12)]
    assert net.forward_features(feats, valid).shape[-1] == 3 * 8 + 12 + 12


def test_single_branch_model_has_no_attention():
    net = _net((("vggish", 8),))
    feats, valid = _inputs(net)
    assert len(net.attn) == 0
    assert net(feats, valid).shape == (2, 40, 2)


def test_invalid_frames_are_ignored_whatever_their_values():
    net = _net()
    feats, valid = _inputs(net)
    valid["visual"][:, 10:20] = False
    valid["vggish"][0] = False  # a video with no audio
    out = net(feats, valid)
    feats2 = {k: v.clone() for k, v in feats.items()}
    feats2["visual"][:, 10:20] = 1e6
    feats2["vggish"][0] = float("nan")
    out2 = net(feats2, valid)
    assert torch.isfinite(out2).all()
    assert torch.allclose(out, out2, atol=1e-5)


def test_attention_with_no_valid_key_gives_zeros_not_nan():
    att = CrossModalAttention(6, 4, 5)
    q, k = torch.randn(2, 7, 6), torch.randn(2, 9, 4)
    kv = torch.ones(2, 9, dtype=torch.bool)
    kv[1] = False
    out = att(q, k, kv)
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out[1]) == 0
    assert torch.count_nonzero(out[0]) > 0


def test_attention_is_scaled_dot_product():
    att = CrossModalAttention(4, 4, 4)
    q, k = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    Q, K, V = att.q(q), att.k(k), att.v(k)
    ref = torch.softmax(Q @ K.transpose(1, 2) / 2.0, -1) @ V
    assert torch.allclose(att(q, k), ref, atol=1e-6)


def test_gradients_reach_every_branch():
    net = _net().train()
    feats, valid = _inputs(net)
    net(feats, valid).sum().backward()
    for name in ("visual", "vggish", "logmel"):
        g = net.branches[name].tcn.tcns[0].blocks[0].net[0].parametrizations.weight.original1.grad
        assert g is not None and g.abs().sum() > 0


def test_attention_span_limits_keys_to_nearby_frames():
    att = CrossModalAttention(4, 4, 4, span=2).eval()
    q, k = torch.randn(1, 20, 4), torch.randn(1, 20, 4)
    out = att(q, k)
    k2 = k.clone()
    k2[0, 10] += 5.0  # only queries 8..12 can see key 10
    out2 = att(q, k2)
    changed = (out - out2).abs().sum(-1)[0] > 1e-6
    assert changed.nonzero().flatten().tolist() == [8, 9, 10, 11, 12]
