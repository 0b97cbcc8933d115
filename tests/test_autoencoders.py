"""Autoencoders: parity with diffusers' AutoencoderKL, the checkpoint contract, and latent caching.

diffusers is imported here as the reference only; mmdiff itself never imports it (checked below).
"""
import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

import mmdiff.data.latents as latents_module
import mmdiff.components.autoencoders as autoencoders_module
from mmdiff.core.checkpoint import CheckpointError
from mmdiff.data.latents import LatentCacheError, LatentDataset, cache_latents
from mmdiff.components.autoencoders import (AutoencoderKL, AutoencoderKLConfig, IdentityAutoencoder,
                                            load_autoencoder)

TOL = 1e-5  # max abs difference allowed against diffusers, float32
SCALE, SHIFT = 0.3611, 0.1159  # deliberately not SD's defaults, so a hard-coded constant would show
SMALL = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
             scaling_factor=SCALE, shift_factor=SHIFT)
VARIANTS = {
    "mid-attention": dict(norm_num_groups=8),
    "no-mid-attention": dict(norm_num_groups=32, mid_block_add_attention=False),
    "no-quant-conv": dict(norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False),
}


def small_diffusers_vae(**overrides) -> DiffusersAutoencoderKL:
    torch.manual_seed(0)
    vae = DiffusersAutoencoderKL(**{**SMALL, **overrides}).eval()
    with torch.no_grad():  # move norms off their identity init so a misplaced norm weight shows
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae


def images(n=3, size=32, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def max_abs(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=list(VARIANTS))
def diffusers_pair(request, tmp_path_factory):
    ref = small_diffusers_vae(**VARIANTS[request.param])
    folder = tmp_path_factory.mktemp(request.param) / "vae"
    ref.save_pretrained(folder)
    return ref, folder


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "vae"
    small_diffusers_vae(**VARIANTS["mid-attention"]).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- parity with diffusers

@torch.no_grad()
def test_matches_diffusers(diffusers_pair):
    ref, folder = diffusers_pair
    ours = load_autoencoder(folder)
    assert isinstance(ours, AutoencoderKL)
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = images()
    posterior = ref.encode(x).latent_dist

    mean = ours.encode(x, sample=False)
    assert max_abs(mean, (posterior.mean - SHIFT) * SCALE) <= TOL

    expected = (posterior.sample(generator=torch.Generator().manual_seed(7)) - SHIFT) * SCALE
    assert max_abs(ours.encode(x, generator=torch.Generator().manual_seed(7)), expected) <= TOL
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4, 5)]  # noqa: E731
    assert max_abs(ours.encode(x, generator=gens()), (posterior.sample(generator=gens()) - SHIFT) * SCALE) <= TOL

    assert max_abs(ours.decode(mean), ref.decode(mean / SCALE + SHIFT).sample) <= TOL
    assert ours.downsample_factor == 2 and ours.latent_shape(x.shape) == tuple(mean.shape) == (3, 4, 16, 16)


@torch.no_grad()
def test_sample_depends_only_on_its_generator(vae_folder):
    ae = load_autoencoder(vae_folder)
    x = images(4)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = ae.encode(x, generator=gens([10, 11, 12, 13]))
    alone = ae.encode(x[2:3], generator=gens([12]))
    assert max_abs(full[2:3], alone) <= TOL
    ae.encode_batch_size = ae.decode_batch_size = 1  # chunking changes memory, not results
    assert max_abs(ae.encode(x, generator=gens([10, 11, 12, 13])), full) <= TOL
    assert max_abs(ae.decode(full), load_autoencoder(vae_folder).decode(full)) <= TOL
    with pytest.raises(ValueError, match="3 generators for a batch of 4"):
        ae.encode(x, generator=gens([1, 2, 3]))


@torch.no_grad()
def test_video_is_encoded_frame_by_frame(vae_folder):
    ae = load_autoencoder(vae_folder)
    video = images(6).view(2, 3, 3, 32, 32)  # (B, T, C, H, W)
    latents = ae.encode(video, sample=False)
    assert latents.shape == (2, 3, 4, 16, 16)
    assert max_abs(latents[1], ae.encode(video[1], sample=False)) <= TOL
    assert ae.decode(latents).shape == video.shape


@torch.no_grad()
def test_per_channel_latent_statistics(tmp_path):
    """SDXL-style latents_mean/latents_std: latents = (z - mean) * scaling_factor / std."""
    mean, std = (0.1, -0.2, 0.3, 0.0), (0.9, 1.1, 1.3, 0.7)
    ref = small_diffusers_vae(shift_factor=None, latents_mean=mean, latents_std=std, norm_num_groups=8)
    ref.save_pretrained(tmp_path)
    ours = load_autoencoder(tmp_path)
    x = images(2)
    m, s = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1)
    expected = (ref.encode(x).latent_dist.mean - m) * SCALE / s
    latents = ours.encode(x, sample=False)
    assert max_abs(latents, expected) <= TOL
    assert max_abs(ours.decode(latents), ref.decode(latents * s / SCALE + m).sample) <= TOL


# ----------------------------------------------------------------------------- checkpoints

def test_own_format_round_trips_bit_exactly(vae_folder, tmp_path):
    ae = AutoencoderKL.from_pretrained(vae_folder)  # detects the diffusers folder
    ae.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["_class"] == "AutoencoderKL"
    back = load_autoencoder(tmp_path / "ours")
    assert back.config == ae.config
    for name, t in ae.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    assert back.fingerprint() == ae.fingerprint()
    with torch.no_grad():
        x = images(2)
        assert torch.equal(back.encode(x, sample=False), ae.encode(x, sample=False))


def test_pipeline_folder_and_hub_layout(vae_folder, tmp_path):
    (tmp_path / "vae").symlink_to(vae_folder, target_is_directory=True)  # a pipeline root holding vae/
    assert isinstance(load_autoencoder(tmp_path), AutoencoderKL)
    assert isinstance(AutoencoderKL.from_pretrained(tmp_path, subfolder="vae"), AutoencoderKL)


def _broken_copy(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "diffusion_pytorch_model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "diffusion_pytorch_model.safetensors")
    return dst


def test_broken_diffusers_folders_name_the_problem(vae_folder, tmp_path):
    name = "decoder.up_blocks.0.resnets.1.conv1.weight"
    missing = _broken_copy(vae_folder, tmp_path / "missing", lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing tensor '{name}'"):
        load_autoencoder(missing)
    wrong = _broken_copy(vae_folder, tmp_path / "wrong", lambda t: t.update({name: t[name][:, :8].contiguous()}))
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' has shape"):
        AutoencoderKL.from_diffusers(wrong)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((vae_folder / "config.json").read_text())
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="refusing to load a pickle"):
        load_autoencoder(pickled)

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny"}))
    with pytest.raises(CheckpointError, match="'AutoencoderTiny', which is not an autoencoder"):
        load_autoencoder(other)


def test_legacy_attention_names_load(vae_folder, tmp_path):
    """Old SD 1.x vae/ folders name the mid-block attention query/key/value/proj_attn."""
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def rename(tensors):
        for name in [n for n in tensors if ".attentions." in n and ".group_norm." not in n]:
            parent, leaf = name.rsplit(".", 1)
            block, proj = parent.split(".attentions.0.")
            tensors[f"{block}.attentions.0.{old[proj]}.{leaf}"] = tensors.pop(name)

    legacy = _broken_copy(vae_folder, tmp_path / "legacy", rename)
    assert "encoder.mid_block.attentions.0.query.weight" in load_file(legacy / "diffusion_pytorch_model.safetensors")
    new, ours = load_autoencoder(vae_folder), load_autoencoder(legacy)
    for name, t in new.state_dict().items():
        assert torch.equal(ours.state_dict()[name], t), name


def test_invalid_configs_are_explained():
    with pytest.raises(ValueError, match="only DownEncoderBlock2D/UpDecoderBlock2D"):
        AutoencoderKLConfig(down_block_types=("CrossAttnDownBlock2D",))
    with pytest.raises(ValueError, match="divisible by norm_num_groups"):
        AutoencoderKLConfig(block_out_channels=(48,), norm_num_groups=32)
    with pytest.raises(ValueError, match="either shift_factor or latents_mean"):
        AutoencoderKLConfig(shift_factor=0.1, latents_mean=(0.0,) * 4)


# ----------------------------------------------------------------------------- precision

@torch.no_grad()
def test_force_upcast_runs_half_precision_weights_in_fp32(vae_folder):
    ae = load_autoencoder(vae_folder, dtype=torch.bfloat16)
    fp32 = load_autoencoder(vae_folder, dtype=torch.bfloat16).float()  # the same bf16-rounded weights
    x = images(2)
    assert max_abs(ae.encode(x, sample=False), fp32.encode(x, sample=False)) <= TOL
    latents = fp32.encode(x, sample=False)
    assert max_abs(ae.decode(latents), fp32.decode(latents)) <= TOL
    assert {p.dtype for p in ae.parameters()} == {torch.bfloat16}  # weights keep their dtype
    ae.config.force_upcast = False  # now it really computes in bf16
    assert ae.decode(latents.bfloat16()).dtype == torch.bfloat16
    assert max_abs(ae.decode(latents).float(), fp32.decode(latents)) > TOL


def test_upcast_leaves_the_module_alone_for_autograd(vae_folder):
    """Upcasting uses fp32 copies of the weights per call, so gradients reach the bf16 weights."""
    ae = load_autoencoder(vae_folder, dtype=torch.bfloat16)
    with torch.inference_mode():
        ae.encode(images(1), sample=False)
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    ae.decode(z).float().square().mean().backward()
    assert z.grad is not None and ae.decoder.conv_out.weight.grad.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- pixel space, checks

def test_identity_autoencoder(tmp_path):
    ae = load_autoencoder("identity:3")
    x = images(2, size=9)
    assert (ae.latent_channels, ae.image_channels, ae.downsample_factor) == (3, 3, 1)
    assert torch.equal(ae.encode(x), x) and torch.equal(ae.decode(x), x)
    ae.save_pretrained(tmp_path / "identity")
    back = load_autoencoder(tmp_path / "identity")
    assert isinstance(back, IdentityAutoencoder) and back.config == ae.config
    with pytest.raises(ValueError, match="'identity:<channels>'"):
        load_autoencoder("identity:rgb")


def test_wrong_inputs_fail_with_the_expected_shape(vae_folder):
    ae = load_autoencoder(vae_folder)
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\), got shape \(2, 1, 32, 32\)"):
        ae.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="multiples of the downsample factor 2"):
        ae.encode(torch.zeros(1, 3, 31, 32))
    with pytest.raises(ValueError, match=r"expects latents \(B, 4, h, w\)"):
        ae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="floating tensor"):
        ae.encode(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_our_modules_never_import_diffusers():
    for module in (autoencoders_module, latents_module):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if m.split(".")[0] == "diffusers"], module.__file__


# ----------------------------------------------------------------------------- latent caching

class RandomImages(Dataset):
    def __init__(self, n, shape=(3, 16, 16), labels=True, fail_at=None):
        self.x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(n)) * 2 - 1
        self.labels, self.fail_at = labels, fail_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError("disk gone")
        key = "image" if self.x.ndim == 4 else "video"
        return {key: self.x[i], "caption": f"item {i}", **({"label": i % 3} if self.labels else {})}


def test_cache_identity_latents_with_labels(tmp_path):
    data = RandomImages(10)
    cache = cache_latents(data, IdentityAutoencoder(3), tmp_path / "c", batch_size=4, shard_size=3)
    assert len(cache) == 10 and cache.latent_shape == (3, 16, 16)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "index.json", *(f"latents-0000{i}.safetensors" for i in range(4))]
    for i in (0, 3, 9, -1):
        assert torch.equal(cache[i]["latents"], data.x[i]) and cache[i]["label"].item() == (i % 10) % 3
    with pytest.raises(IndexError):
        cache[10]
    worker_copy = pickle.loads(pickle.dumps(cache))  # what DataLoader workers receive
    assert torch.equal(worker_copy[5]["latents"], data.x[5])
    (tmp_path / "c" / "latents-00002.safetensors").unlink()
    with pytest.raises(LatentCacheError, match="latents-00002.safetensors listed in index.json is missing"):
        LatentDataset(tmp_path / "c")


def test_cache_is_reused_and_refuses_another_autoencoder(tmp_path, vae_folder, monkeypatch):
    data, out = RandomImages(6), tmp_path / "c"
    ae = load_autoencoder(vae_folder)
    first = cache_latents(data, ae, out, batch_size=4)
    monkeypatch.setattr(ae, "encode", lambda *a, **k: pytest.fail("a matching cache must be reused"))
    again = cache_latents(data, ae, out, batch_size=2)
    assert torch.equal(again[5]["latents"], first[5]["latents"])
    with pytest.raises(LatentCacheError, match="latents of another autoencoder"):
        cache_latents(data, IdentityAutoencoder(3), out)
    with pytest.raises(LatentCacheError, match="count: cached 6, now 5"):
        cache_latents(RandomImages(5), ae, out)
    monkeypatch.undo()
    rebuilt = cache_latents(data, IdentityAutoencoder(3), out, overwrite=True)
    assert rebuilt.autoencoder["class"] == "IdentityAutoencoder"


@torch.no_grad()
def test_cached_vae_latents_equal_direct_encoding(tmp_path, vae_folder):
    data, ae = RandomImages(5, labels=False), load_autoencoder(vae_folder)
    cache = cache_latents(data, ae, tmp_path / "mean", batch_size=2, shard_size=4)
    assert "label" not in cache[0]
    assert max_abs(torch.stack([cache[i]["latents"] for i in range(5)]), ae.encode(data.x, sample=False)) <= TOL
    # a sampled cache does not depend on how items were batched
    a = cache_latents(data, ae, tmp_path / "s2", batch_size=2, sample=True, seed=5)
    b = cache_latents(data, ae, tmp_path / "s5", batch_size=5, sample=True, seed=5)
    assert max(max_abs(a[i]["latents"], b[i]["latents"]) for i in range(5)) <= TOL
    assert max_abs(a[0]["latents"], cache[0]["latents"]) > TOL


@torch.no_grad()
def test_cache_video_items(tmp_path, vae_folder):
    data, ae = RandomImages(3, shape=(2, 3, 16, 16)), load_autoencoder(vae_folder)
    cache = cache_latents(data, ae, tmp_path / "v", key="video", batch_size=2)
    assert cache.latent_shape == (2, 4, 8, 8)
    assert max_abs(cache[2]["latents"], ae.encode(data.x[2], sample=False)) <= TOL


def test_cache_write_is_atomic(tmp_path):
    with pytest.raises(RuntimeError, match="disk gone"):
        cache_latents(RandomImages(8, fail_at=6), IdentityAutoencoder(3), tmp_path / "c", batch_size=2, shard_size=2)
    assert list(tmp_path.iterdir()) == []  # neither a half cache nor a leftover temp folder
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    with pytest.raises(LatentCacheError, match="is not a latent cache"):
        cache_latents(RandomImages(2), IdentityAutoencoder(3), tmp_path / "photos")
