"""DiT contracts: sizes against the paper, shapes for every patcher, label handling, adaLN-Zero,
frame attention that never forms a (T*H*W)^2 matrix, equality with diffusers' DiT at the same
configuration (which is what makes benchmarks/dit_train.py a like-for-like comparison),
gradient checkpointing, save/load and bfloat16.

diffusers is the reference only: the weight mapping is the library's converter
(mmdiff.components.converters, tested in full in test_pretrained_dit.py), which never imports it.
"""
import ast
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel

import mmdiff.core.dit as dit_module
from mmdiff.components.converters import build_dit, convert_diffusers
from mmdiff.core.dit import DiT, DiTBlock, DiTConfig, ScoresAttention, attend, gelu_tanh, per_sample
from mmdiff.core.patch import PatchConfig, apply_rope, rope_frequencies

TOL = 1e-5  # max abs difference against diffusers, float32
# DiT paper Table 4 / the official repo's printout; the official count includes the fixed 2-D
# sin-cos table (tokens x hidden) as a parameter, ours keeps it as a buffer.
PAPER_PARAMS = {"DiT-S/2": 33e6, "DiT-B/2": 130e6, "DiT-L/2": 458e6, "DiT-XL/2": 675.13e6}
OFFICIAL_XL2 = 675_129_632


def tiny(kind="image", attention="joint", depth=2, **options) -> DiT:
    patches = {"image": PatchConfig("image", 4, (8, 8), 2),
               "video": PatchConfig("video", 3, (4, 8, 8), 2, temporal_patch=2),
               "sequence": PatchConfig("sequence", 16, (12,), 1, positions=options.pop("positions", "sincos"))}
    config = DiTConfig(patch=patches[kind], hidden_size=32, depth=depth, num_heads=4, attention=attention,
                       **{"num_classes": 10, **options})
    return DiT(config)


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Move every weight off its init (adaLN-Zero makes a fresh DiT the zero function)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return module


# ------------------------------------------------------------------------------------ sizes

def count(name: str, **options) -> int:
    with torch.device("meta"):
        model = DiT.from_preset(name, in_channels=4, input_size=32, num_classes=1000, out_channels=8, **options)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_counts_match_the_paper(name):
    n = count(name)
    assert abs(n - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.01, f"{name}: {n / 1e6:.2f}M"


def test_xl2_count_equals_the_official_repo_plus_its_fixed_position_table():
    n, (hidden, tokens) = count("DiT-XL/2"), (1152, (32 // 2) ** 2)
    assert n + tokens * hidden == OFFICIAL_XL2


def test_preset_options_override_the_preset():
    assert count("DiT-S/2", depth=6) < count("DiT-S/2")


# ----------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("kind,attention,shape", [
    ("image", "joint", (2, 4, 8, 8)),
    ("video", "joint", (2, 4, 3, 8, 8)),
    ("video", "factorized", (2, 4, 3, 8, 8)),
    ("video", "factorized", (2, 2, 3, 8, 8)),  # fewer frames than trained on
    ("sequence", "joint", (2, 12, 16)),
    ("sequence", "causal", (2, 7, 16)),
])
def test_output_is_shaped_like_the_input(kind, attention, shape):
    model = tiny(kind, attention).eval()
    out = model(torch.randn(shape), torch.rand(shape[0]) * 999, torch.tensor([1, 2]))
    assert out.shape == shape


@pytest.mark.parametrize("positions", ["sincos", "learned", "rope"])
def test_sequence_positions(positions):
    model = randomize(tiny("sequence", positions=positions)).eval()
    out = model(torch.randn(2, 9, 16), torch.tensor([3.0, 500.0]), torch.tensor([0, 9]))
    assert out.shape == (2, 9, 16) and torch.isfinite(out).all()


def test_learned_sigma_doubles_the_output_channels():
    model = tiny(out_channels=8).eval()
    assert model(torch.randn(2, 4, 8, 8), torch.tensor(10), torch.tensor([1, 2])).shape == (2, 8, 8, 8)


# ----------------------------------------------------------------------------------- labels

def test_label_out_of_range_names_the_range():
    model = tiny().eval()  # 10 classes + the null class 10
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0])
    for bad in ([0, 11], [-1, 3]):
        with pytest.raises(ValueError, match=r"0\.\.10"):
            model(x, t, torch.tensor(bad))


def test_missing_labels_for_a_class_conditional_model():
    with pytest.raises(ValueError, match="class_labels"):
        tiny().eval()(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]))


def test_label_dropout_uses_the_null_class_only_in_training():
    model = tiny(class_dropout=0.5)
    seen = []
    model.y_embedder.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    labels = torch.arange(10).repeat(10)
    x, t = torch.randn(100, 4, 8, 8), torch.rand(100)
    torch.manual_seed(0)
    model.train()(x, t, labels)
    model.eval()(x, t, labels)
    trained, evaluated = seen
    dropped = trained != labels
    assert 0 < dropped.sum() < len(labels)
    assert (trained[dropped] == model.null_class).all()
    assert torch.equal(evaluated, labels)


# ------------------------------------------------------------------------------- adaLN-Zero

def test_at_init_the_output_is_exactly_zero_and_every_block_is_the_identity():
    model = tiny("video", "factorized", depth=2).eval()
    x, t, y = torch.randn(2, 4, 3, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([1, 2])
    assert torch.equal(model(x, t, y), torch.zeros_like(x))
    h, c = torch.randn(2, 2 * 16, 32), torch.randn(2, 32)
    for block in model.blocks:
        assert torch.equal(block(h, c, grid=(2, 16)), h)


# -------------------------------------------------------------------------- frame attention

@pytest.mark.parametrize("mode", ["spatial", "temporal"])
def test_frame_attention_mixes_only_its_own_group(mode):
    frames, per_frame, d = 3, 5, 32
    config = DiTConfig(patch=PatchConfig("video", 3, (frames, 8, 8), 2), hidden_size=d, depth=1, num_heads=4)
    block = randomize(DiTBlock(config, mode)).eval()
    h, c = torch.randn(1, frames * per_frame, d), torch.randn(1, d)
    t0, s0 = 1, 2
    bumped = h.clone()
    bumped[0, t0 * per_frame + s0] += 1.0
    with torch.no_grad():
        changed = (block(bumped, c, grid=(frames, per_frame)) != block(h, c, grid=(frames, per_frame))).any(-1)[0]
    t, s = torch.arange(frames).repeat_interleave(per_frame), torch.arange(per_frame).repeat(frames)
    expected = (t == t0) if mode == "spatial" else (s == s0)
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # SDPA, and the CPU bf16 path
def test_factorized_attention_never_attends_over_all_frames_at_once(monkeypatch, dtype):
    key_lengths = []
    sdpa, explicit = F.scaled_dot_product_attention, ScoresAttention.apply

    def spy(fn):
        def run(q, k, v, *args, **kwargs):
            key_lengths.append(k.shape[-2])
            return fn(q, k, v, *args, **kwargs)
        return run

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy(sdpa))
    monkeypatch.setattr(ScoresAttention, "apply", spy(explicit))
    model = randomize(tiny("video", "factorized", depth=4)).eval().to(dtype)
    frames, tokens_per_frame = 2, (8 // 2) ** 2  # 4 frames at temporal patch 2
    model(torch.randn(2, 4, 3, 8, 8, dtype=dtype), torch.tensor([5.0, 6.0]), torch.tensor([1, 2]))
    assert len(key_lengths) == 4
    assert max(key_lengths) == max(frames, tokens_per_frame)
    assert frames * tokens_per_frame not in key_lengths


# ------------------------------------------------------------------------------- diffusers

def diffusers_dit(depth=2, classes=10, size=8, out_channels=8) -> DiTTransformer2DModel:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4,
                                  out_channels=out_channels, num_layers=depth, sample_size=size, patch_size=2,
                                  num_embeds_ada_norm=classes, norm_eps=1e-6)
    randomize(model)
    blocks = model.transformer_blocks
    for block in blocks[1:]:
        # diffusers gives every block its own timestep/label embedder; the paper's DiT (and ours)
        # has one, and the converter takes only equal copies (as every published checkpoint has).
        block.norm1.emb.load_state_dict(blocks[0].norm1.emb.state_dict())
    return model.eval()


def ours_from_diffusers(theirs: DiTTransformer2DModel) -> DiT:
    """The library's converter (mmdiff.components.converters), as a pipeline would call it."""
    config = {"_class_name": type(theirs).__name__, **theirs.config}
    return build_dit(*convert_diffusers(config, theirs.state_dict()))


def test_same_function_as_diffusers_dit():
    theirs = diffusers_dit()
    ours = ours_from_diffusers(theirs)
    assert (ours.patcher.pos - theirs.pos_embed.pos_embed[0]).abs().max() < 1e-6
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(4, 4, 8, 8, generator=g), torch.rand(4, generator=g) * 999
    y = torch.randint(0, 10, (4,), generator=g)
    with torch.no_grad():
        expected = theirs(x, t, y, return_dict=False)[0]
        got = ours(x, t, y)
    # learned sigma: diffusers returns 2 x 4 channels, ours the eps half only
    assert expected.shape == (4, 8, 8, 8) and got.shape == (4, 4, 8, 8)
    expected = expected[:, :4]
    assert expected.abs().mean() > 0.1  # a function worth comparing, not adaLN-Zero's zeros
    assert (got - expected).abs().max() <= TOL


def test_library_never_imports_diffusers():
    tree = ast.parse(Path(dit_module.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any(n.startswith("diffusers") for n in names)


# ------------------------------------------------------------------------ explicit attention

def attention_and_grads(fn, q, k, v, grad):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad)
    return [out, q.grad, k.grad, v.grad]


def key_padding(lengths, n):
    return (torch.arange(n)[None] < torch.tensor(lengths)[:, None])[:, None, None, :]  # (B, 1, 1, M)


# (mask, causal) as the text model passes them: none, right padding, causal (the AR baseline)
MASKINGS = [(None, False), (key_padding([16, 9], 16), False), (None, True)]


@pytest.mark.parametrize("mask, causal", MASKINGS, ids=["plain", "padding", "causal"])
def test_scores_attention_equals_sdpa_with_gradients(mask, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(2, 3, 16, 8, generator=g) for _ in range(4))
    ours = attention_and_grads(lambda *a: ScoresAttention.apply(*a, mask, causal), 3 * q, k, v, grad)
    ref = attention_and_grads(partial(F.scaled_dot_product_attention, attn_mask=mask, is_causal=causal),
                              3 * q, k, v, grad)
    for a, b in zip(ours, ref):
        assert (a - b).abs().max() < 1e-5
    if mask is not None:  # padded keys get no gradient and change nothing
        assert ours[2][1, :, 9:].abs().max() == 0 and ours[3][1, :, 9:].abs().max() == 0


def test_scores_attention_gives_zero_where_nothing_may_be_attended_like_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(2, 3, 4, 8, generator=g, dtype=torch.bfloat16) for _ in range(4))
    empty = key_padding([4, 0], 4)  # the second sample's context is empty (as for guidance's blank prompt)
    ours = attention_and_grads(lambda *a: ScoresAttention.apply(*a, empty, False), q, k, v, grad)
    ref = attention_and_grads(partial(F.scaled_dot_product_attention, attn_mask=empty), q, k, v, grad)
    assert torch.equal(ours[0][1], torch.zeros_like(ours[0][1])) and torch.equal(ref[0][1], ours[0][1])
    assert all(torch.isfinite(t).all() for t in ours) and ours[1][1].abs().max() == 0


def test_scores_attention_applies_padding_and_causal_together():
    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(2, 3, 16, 8, generator=g) for _ in range(4))
    mask = key_padding([16, 9], 16)
    ours = attention_and_grads(lambda *a: ScoresAttention.apply(*a, mask, True), q, k, v, grad)
    both = mask & torch.ones(16, 16, dtype=torch.bool).tril()
    ref = attention_and_grads(partial(F.scaled_dot_product_attention, attn_mask=both), q, k, v, grad)
    for a, b in zip(ours, ref):
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("mask, causal", MASKINGS, ids=["plain", "padding", "causal"])
def test_scores_attention_in_bfloat16_is_as_accurate_as_flash(mask, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(2, 3, 64, 16, generator=g, dtype=torch.float64) for _ in range(4))
    mask = None if mask is None else key_padding([64, 37], 64)
    sdpa = partial(F.scaled_dot_product_attention, attn_mask=mask, is_causal=causal)
    ref = attention_and_grads(sdpa, 3 * q, k, v, grad)
    low = [t.bfloat16() for t in (3 * q, k, v, grad)]
    ours = attention_and_grads(lambda *a: ScoresAttention.apply(*a, mask, causal), *low)
    flash = attention_and_grads(sdpa, *low)
    for a, b, r in zip(ours, flash, ref):
        scale = r.abs().max()
        # within 2x of the flash kernel's own bfloat16 error, which is a few bfloat16 epsilons
        assert (a.double() - r).abs().max() / scale <= max(2 * (b.double() - r).abs().max() / scale, 0.01)


def test_gelu_tanh_is_tanh_gelu_to_bfloat16_resolution():
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = F.gelu(x, approximate="tanh")
    assert torch.equal(gelu_tanh(x), exact)  # float32/64: the tanh formula itself
    assert torch.equal(gelu_tanh(x.float()), F.gelu(x.float(), approximate="tanh"))
    fast = gelu_tanh(x.bfloat16()).double()  # bfloat16 on the CPU: erf-GELU
    aten = F.gelu(x.bfloat16(), approximate="tanh").double()  # ATen's bfloat16 tanh-GELU
    rounding = 2**-8 * (1.2 * x.abs() + exact.abs())  # input and output, half a step each (slope <= 1.13)
    assert ((aten - exact).abs() <= rounding).all()
    assert ((fast - exact).abs() <= 4.8e-4 + rounding).all()  # the functions differ by <= 4.7e-4
    assert (fast - exact).abs().mean() < 1.03 * (aten - exact).abs().mean()
    grads = []
    for fn, t in ((gelu_tanh, x.bfloat16()), (partial(F.gelu, approximate="tanh"), x.bfloat16()),
                  (partial(F.gelu, approximate="tanh"), x)):
        t = t.clone().requires_grad_()
        fn(t).backward(torch.ones_like(t))
        grads.append(t.grad.double())
    fast, aten, exact = grads
    # the derivatives differ by at most 8.7e-4; bfloat16 rounding alone moves ATen's by up to 5e-3
    assert (fast - exact).abs().max() <= (aten - exact).abs().max() + 8.7e-4
    assert (fast - exact).abs().mean() < 1.1 * (aten - exact).abs().mean()


def test_adaln_modulation_is_float32_under_cpu_autocast():
    block = DiTBlock(DiTConfig(hidden_size=64, depth=1, num_heads=4))
    torch.nn.init.normal_(block.adaLN_modulation[-1].weight, generator=torch.Generator().manual_seed(0))
    c = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = per_sample(block.adaLN_modulation, c, torch.bfloat16)
        autocast = block.adaLN_modulation(c)
    exact = block.adaLN_modulation(c)[:, None]
    assert got.dtype == torch.bfloat16 and torch.equal(got, exact.bfloat16())  # one rounding, at the end
    assert (autocast[:, None].float() - exact).abs().max() > (got.float() - exact).abs().max()


def test_attend_uses_sdpa_for_additive_masks_long_keys_or_float32(monkeypatch):
    used = []
    monkeypatch.setattr(ScoresAttention, "apply", lambda *a: used.append("explicit") or a[0])
    q = torch.randn(1, 2, 8, 4, dtype=torch.bfloat16)
    long = torch.randn(1, 2, 4 * 4 + 1, 4, dtype=torch.bfloat16)  # more than 4 * head_dim keys
    attend(q, q, q)
    attend(q, q, q, mask=torch.ones(1, 1, 1, 8, dtype=torch.bool))
    attend(q, q, q, causal=True)
    assert used == ["explicit"] * 3
    attend(q, q, q, mask=torch.zeros(1, 1, 1, 8, dtype=torch.bfloat16))  # additive: SDPA
    attend(q.float(), q.float(), q.float())
    attend(q, long, long)
    assert used == ["explicit"] * 3


# ------------------------------------------------------------- checkpointing, save, bfloat16

def loss_grads(model, x, t, y):
    model.zero_grad()
    torch.manual_seed(0)  # the same label dropout both times
    model(x, t, y).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients():
    model = randomize(tiny("video", "factorized", depth=2)).train()
    x, t, y = torch.randn(2, 4, 3, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([1, 2])
    plain = loss_grads(model, x, t, y)
    model.config.gradient_checkpointing = True
    checkpointed = loss_grads(model, x, t, y)
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], atol=1e-7), name


def test_save_and_load_round_trip_bitwise(tmp_path):
    model = randomize(tiny("video", "factorized", out_channels=6)).eval()
    model.save_pretrained(tmp_path / "dit")
    loaded = DiT.from_pretrained(tmp_path / "dit")
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x, t, y = torch.randn(2, 4, 3, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([1, 2])
    assert torch.equal(model(x, t, y), loaded(x, t, y))


def test_bfloat16_weights_forward():
    model = randomize(tiny()).eval().to(torch.bfloat16)
    out = model(torch.randn(2, 4, 8, 8, dtype=torch.bfloat16), torch.tensor([10.0, 900.0]), torch.tensor([1, 2]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_bfloat16_autocast_training_step_follows_float32():
    model = randomize(tiny(class_dropout=0.0)).train()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([1, 2])
    full = loss_grads(model, x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_grads(model, x, t, y)
    for name, grad in full.items():
        rel = (low[name].float() - grad).norm() / grad.norm().clamp(min=1e-12)
        assert rel < 0.05, (name, rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_rotates_pairs_and_scores_depend_on_offset_only(dtype):
    cos, sin = rope_frequencies(32, 16)
    x = torch.randn(2, 3, 16, 32, dtype=torch.float64).to(dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]  # the textbook pairs, computed as in the papers
    c, s = cos.to(dtype), sin.to(dtype)
    textbook = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)
    assert torch.equal(apply_rope(x, cos, sin), textbook)  # the same products and sums, bit for bit
    # a rotation: norms kept, and <R_m q, R_n k> depends on n - m only
    cos64, sin64 = (t.double() for t in rope_frequencies(32, 16))
    q, k = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    rq = apply_rope(q.expand(1, 1, 16, 32), cos64, sin64)[0, 0]
    rk = apply_rope(k.expand(1, 1, 16, 32), cos64, sin64)[0, 0]
    assert torch.allclose(rq.norm(dim=-1), q.norm().expand(16))
    scores = rq @ rk.T
    assert torch.allclose(scores.diagonal(3)[:-1], scores.diagonal(3)[1:])
    assert torch.allclose(scores.diagonal(-5)[:-1], scores.diagonal(-5)[1:])
