"""The OpenVLA-OFT policy runtime on the tiny preset: real timm towers, real Llama, real checkpoints."""
import json

import numpy as np
import pytest
import torch

from vla_robot.policy import action_tokenizer, normalization
from vla_robot.policy.checkpoint import CheckpointError, save_checkpoint
from vla_robot.policy.runtime import build_model, load_policy, load_preset

torch.set_num_threads(1)


def make_obs(seed=0, n=1, instruction="Pick up the red cube", state_dim=6):
    rng = np.random.default_rng(seed)
    return [
        {
            "images": {
                "front": rng.integers(0, 256, (64, 80, 3), dtype=np.uint8),
                "wrist": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
            },
            "state": rng.uniform(-1, 1, state_dim),
            "instruction": instruction if i % 2 == 0 else instruction + " and place it in the bowl",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def rt():
    return load_policy(preset="tiny", seed=0)


def test_infer_shapes_and_ranges(rt):
    meta = rt.metadata
    assert meta["cameras"] == ["front", "wrist"] and meta["head"] == "discrete" and meta["model"] == "tiny"
    H, D = meta["chunk_size"], meta["action_dim"]
    out = rt.infer(make_obs(n=3), mode="sample", return_tokens=True, generator=torch.Generator().manual_seed(0))
    assert len(out) == 3
    for r in out:
        assert r["actions"].shape == (H, D) and r["actions"].dtype == np.float32 and np.isfinite(r["actions"]).all()
        assert r["tokens"].shape == (H * D,) and r["tokens"].dtype == np.int64
        assert ((r["tokens"] >= 31744) & (r["tokens"] <= 31999)).all()
        assert r["logprobs"].shape == (H * D,) and (r["logprobs"] <= 0).all()
        # actions are the un-normalised bin centres of the tokens
        np.testing.assert_allclose(r["actions"], rt.processor.tokens_to_actions(r["tokens"]), rtol=1e-6)
    plain = rt.infer(make_obs(n=1))[0]
    assert plain["tokens"] is None and plain["logprobs"] is None


def test_same_seed_same_weights_and_sampling_reproducible(rt):
    a = build_model(load_preset("tiny"), seed=0).state_dict()
    b = build_model(load_preset("tiny"), seed=1).state_dict()
    ref = rt.model.state_dict()
    assert all(torch.equal(a[k], ref[k]) for k in ref)
    assert not torch.equal(a["projector.fc1.weight"], b["projector.fc1.weight"])
    obs = make_obs(n=2)
    s1 = rt.infer(obs, mode="sample", return_tokens=True, generator=torch.Generator().manual_seed(7))
    s2 = rt.infer(obs, mode="sample", return_tokens=True, generator=torch.Generator().manual_seed(7))
    s3 = rt.infer(obs, mode="sample", return_tokens=True, generator=torch.Generator().manual_seed(8))
    assert np.array_equal(s1[0]["tokens"], s2[0]["tokens"])
    assert not np.array_equal(s1[0]["tokens"], s3[0]["tokens"])
    g1, g2 = rt.infer(obs, return_tokens=True), rt.infer(obs, return_tokens=True)
    assert np.array_equal(g1[1]["tokens"], g2[1]["tokens"])


def test_per_observation_seeds_sample_the_same_chunk_in_any_batch(rt):
    obs = make_obs(n=3)
    alone = rt.infer(obs[1:2], mode="sample", return_tokens=True, seeds=[11])[0]
    batched = rt.infer(obs, mode="sample", return_tokens=True, seeds=[5, 11, None])
    assert np.array_equal(alone["tokens"], batched[1]["tokens"])  # independent of its neighbours
    np.testing.assert_allclose(alone["logprobs"], batched[1]["logprobs"], atol=1e-5)
    other = rt.infer(obs[1:2], mode="sample", return_tokens=True, seeds=[12])[0]
    assert not np.array_equal(alone["tokens"], other["tokens"])
    greedy = rt.infer(obs[1:2], return_tokens=True, seeds=[11])[0]  # greedy ignores seeds
    assert np.array_equal(greedy["tokens"], rt.infer(obs[1:2], return_tokens=True)[0]["tokens"])
    with pytest.raises(ValueError, match="one per observation expected, got 2 for 3"):
        rt.infer(obs, mode="sample", seeds=[1, 2])
    with pytest.raises(ValueError, match="either generator or seeds"):
        rt.infer(obs[:1], mode="sample", seeds=[1], generator=torch.Generator())


def test_attention_is_bidirectional(rt):
    m = rt.model
    batch = rt.batch(make_obs())
    with torch.no_grad():
        embeds, mask, first = m.build_inputs(batch)
        A = m.num_action_tokens
        base = m.run_llm(embeds, mask)
        perturbed = embeds.clone()
        perturbed[0, first[0] + A - 1] += 1.0  # the last action slot
        moved = m.run_llm(perturbed, mask)
        early = slice(int(first[0]), int(first[0]) + 4)  # earlier action slots
        assert (base[0, early] - moved[0, early]).abs().max() > 1e-4
        # control: with a causal mask the same change cannot reach earlier positions
        S = embeds.shape[1]
        causal = torch.full((S, S), torch.finfo(embeds.dtype).min).triu(1)[None, None]
        c0, c1 = m.run_llm(embeds, causal), m.run_llm(perturbed, causal)
        assert torch.allclose(c0[0, early], c1[0, early], atol=1e-6)
        # the padding mask still hides right padding: extra pad keys change nothing
        assert torch.equal(mask[0, 0, 0] == 0, torch.ones(S, dtype=torch.bool))


def test_batching_with_padding_matches_single(rt):
    obs = make_obs(n=2)  # different prompt lengths -> right padding in the batch
    assert len(obs[0]["instruction"]) != len(obs[1]["instruction"])
    both = rt.infer(obs, return_tokens=True)
    alone = rt.infer(obs[:1], return_tokens=True)
    np.testing.assert_allclose(both[0]["logprobs"], alone[0]["logprobs"], atol=1e-4)
    assert np.array_equal(both[0]["tokens"], alone[0]["tokens"])


def test_token_bin_round_trip_matches_oft_formulas():
    edges = np.linspace(-1, 1, 256)
    centers = (edges[:-1] + edges[1:]) / 2
    a = np.random.default_rng(0).uniform(-1.2, 1.2, 2000)
    tok = action_tokenizer.encode(a)
    np.testing.assert_array_equal(tok, 32000 - np.digitize(np.clip(a, -1, 1), edges))
    assert tok.min() >= 31744 and tok.max() <= 31999
    np.testing.assert_array_equal(action_tokenizer.decode(tok), centers[np.clip(32000 - tok - 1, 0, 254)])
    inside = np.abs(a) < 1 - 1e-6
    assert np.abs(action_tokenizer.decode(tok)[inside] - a[inside]).max() <= (edges[1] - edges[0]) / 2 + 1e-12
    assert action_tokenizer.encode(np.array([1.0, -1.0])).tolist() == [31744, 31999]
    # every action id decodes, and encoding a bin centre gives back its token
    ids = np.arange(31745, 32000)
    np.testing.assert_array_equal(action_tokenizer.encode(action_tokenizer.decode(ids)), ids)
    with pytest.raises(ValueError, match="not action tokens"):
        action_tokenizer.tokens_to_bins(np.array([31743]))


def test_unnormalize_follows_the_formula_with_mask():
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(500, 4)) * [1, 2, 3, 0.1] + [0, 1, -1, 0.5]
    stats = normalization.compute_statistics(acts, acts, action_mask=[True, True, True, False])
    part = stats["action"]
    xn = rng.uniform(-1, 1, (10, 4))
    lo, hi = np.array(part["q01"]), np.array(part["q99"])
    expect = 0.5 * (xn + 1) * (hi - lo + 1e-8) + lo
    expect[:, 3] = xn[:, 3]  # masked-off (gripper-like) dimension passes through
    np.testing.assert_allclose(normalization.unnormalize(xn, part), expect)
    lo2, hi2 = np.array(part["min"]), np.array(part["max"])
    np.testing.assert_allclose(normalization.unnormalize(xn, part, "bounds")[:, :3], (0.5 * (xn + 1) * (hi2 - lo2 + 1e-8) + lo2)[:, :3])
    inside = np.clip(acts[:20], lo, hi)
    np.testing.assert_allclose(normalization.unnormalize(normalization.normalize(inside, part), part)[:, :3], inside[:, :3], atol=1e-6)
    n = normalization.normalize(acts, part)
    assert n[:, :3].min() >= -1 and n[:, :3].max() <= 1
    with pytest.raises(ValueError, match="last dimension is 3"):
        normalization.unnormalize(np.zeros(3), part)
    with pytest.raises(ValueError, match="action_mask has 2 entries"):
        normalization.compute_statistics(acts, action_mask=[True, False])


def test_set_norm_stats_changes_unnormalisation_and_actions_to_tokens(rt):
    rng = np.random.default_rng(2)
    acts = rng.uniform(-0.1, 0.1, (300, 6)) + np.arange(6) * 0.2
    stats = normalization.compute_statistics(acts)
    stats["proprio"] = normalization.read_statistics(rt_stats_path())["so101_twin"]["proprio"]  # same inputs
    old = rt.infer(make_obs(), return_tokens=True)[0]
    rt.set_norm_stats(stats, "demo")
    try:
        new = rt.infer(make_obs(), return_tokens=True)[0]
        assert np.array_equal(old["tokens"], new["tokens"])  # same model output…
        assert not np.allclose(old["actions"], new["actions"])  # …un-normalised with the new bounds
        assert rt.metadata["norm_key"] == "demo"
        chunk = acts[:8]
        tokens = rt.processor.actions_to_tokens(chunk)
        assert tokens.shape == (48,)
        back = rt.processor.tokens_to_actions(tokens)
        half_bin = (np.array(stats["action"]["max"]) - np.array(stats["action"]["min"])) / 255
        assert (np.abs(back - chunk) <= half_bin + 1e-6).all()
        with pytest.raises(ValueError, match=r"expected \[..., 8, 6\]"):
            rt.processor.actions_to_tokens(acts[:7])
        with pytest.raises(ValueError, match="3 action dims; the model has 6"):
            rt.set_norm_stats(normalization.compute_statistics(acts[:, :3], acts))
        with pytest.raises(ValueError, match="lack 'proprio'"):
            rt.set_norm_stats(normalization.compute_statistics(acts))
    finally:
        rt.set_norm_stats(normalization.read_statistics(rt_stats_path()))


def rt_stats_path():
    from vla_robot.policy.runtime import models_dir

    return models_dir() / "tiny_dataset_statistics.json"


def test_teacher_forced_logprobs_match_rollout_and_train(rt):
    obs = make_obs(n=2)
    out = rt.infer(obs, mode="sample", temperature=1.6, return_tokens=True, generator=torch.Generator().manual_seed(3))
    tokens = torch.tensor(np.stack([o["tokens"] for o in out]))
    batch = rt.batch(obs)
    lp = rt.model.token_logprobs(batch, tokens, temperature=1.6)
    assert lp.shape == (2, 48)
    np.testing.assert_allclose(lp.detach().numpy(), np.stack([o["logprobs"] for o in out]), atol=1e-4)
    lp.sum().backward()
    assert rt.model.language_model.lm_head.weight.grad is not None
    assert rt.model.projector.fc1.weight.grad.abs().sum() > 0  # gradient reaches the vision side
    rt.model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match=r"expected \(2, 48\)"):
        rt.model.token_logprobs(batch, tokens[:, :10])


def test_sft_loss_learns_demonstration_tokens():
    rt = load_policy(preset="tiny", seed=1)
    obs = make_obs(n=2)
    target = np.linspace(-0.5, 0.5, 48).reshape(8, 6)
    tokens = torch.tensor(np.stack([rt.processor.actions_to_tokens(target)] * 2))
    batch = rt.batch(obs)
    opt = torch.optim.AdamW(rt.model.parameters(), lr=3e-3)
    rt.model.train()
    first = None
    for _ in range(30):
        loss = rt.model.sft_loss(batch, tokens)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    rt.model.eval()
    assert loss.item() < 0.5 * first
    pred = rt.infer(obs, return_tokens=True)[0]["tokens"]
    assert (pred == tokens[0].numpy()).mean() > 0.3  # chance: 1/256
    with torch.no_grad():  # the 256-bin variant is the same cross-entropy restricted to the action ids
        bins_loss = rt.model.sft_loss(batch, tokens, vocab="bins")
        np.testing.assert_allclose(bins_loss.item(), -rt.model.token_logprobs(batch, tokens, 1.0).mean().item(), rtol=1e-5)
        assert bins_loss.item() <= rt.model.sft_loss(batch, tokens).item() + 1e-6
    with pytest.raises(ValueError, match="vocab must be"):
        rt.model.sft_loss(batch, tokens, vocab="some")


def test_l1_head_predicts_and_trains():
    rt = load_policy(preset="tiny", seed=0, overrides={"head": "l1"})
    assert rt.metadata["head"] == "l1"
    out = rt.infer(make_obs(n=2), return_tokens=True)
    assert out[0]["actions"].shape == (8, 6) and out[0]["tokens"] is None
    with pytest.raises(ValueError, match="needs the discrete head"):
        rt.infer(make_obs(), mode="sample")
    batch = rt.batch(make_obs(n=2))
    target = torch.full((2, 8, 6), 0.3)
    loss = rt.model.l1_loss(batch, target)
    loss.backward()
    assert rt.model.action_head.model.fc1.weight.grad is not None
    with pytest.raises(ValueError, match="L1 regression head"):
        rt.model.token_logprobs(batch, torch.full((2, 48), 31800))


def test_bad_observations_are_clear_errors(rt):
    obs = make_obs()[0]
    with pytest.raises(ValueError, match=r"missing camera\(s\) \['wrist'\]"):
        rt.infer([{**obs, "images": {"front": obs["images"]["front"]}}])
    with pytest.raises(ValueError, match="must be uint8 HxWx3"):
        rt.infer([{**obs, "images": {**obs["images"], "wrist": np.zeros((8, 8), np.uint8)}}])
    with pytest.raises(ValueError, match="'state' must be 6 finite numbers"):
        rt.infer([{**obs, "state": np.zeros(4)}])
    with pytest.raises(ValueError, match="'instruction' must be a string"):
        rt.infer([{**obs, "instruction": None}])
    with pytest.raises(ValueError, match="list of observation dicts"):
        rt.infer(obs)
    with pytest.raises(ValueError, match="mode must be"):
        rt.infer([obs], mode="beam")
    with pytest.raises(ValueError, match="temperature must be"):
        rt.infer([obs], temperature=0)


def test_load_weights_hot_swap(rt):
    obs = make_obs()
    other = build_model(load_preset("tiny"), seed=5).state_dict()
    before = rt.state_dict()
    ref = rt.infer(obs, return_tokens=True)[0]
    try:
        rt.load_weights(other, version=3)
        assert rt.version == 3 and rt.metadata["version"] == 3
        assert not np.allclose(rt.infer(obs, return_tokens=True)[0]["logprobs"], ref["logprobs"])
        # a partial update (one tensor) and an additive delta
        w = "projector.fc3.bias"
        rt.load_weights({w: torch.ones_like(other[w])}, version=4, delta=True)
        assert torch.allclose(rt.model.state_dict()[w], other[w] + 1)
        with pytest.raises(ValueError, match="unknown tensor 'nope'"):
            rt.load_weights({"nope": torch.zeros(1)}, version=5)
        with pytest.raises(ValueError, match=r"'projector.fc3.bias' has shape \(3,\)"):
            rt.load_weights({w: np.zeros(3, np.float32)}, version=5)
        assert rt.version == 4
    finally:
        rt.load_weights(before, version=0)
    np.testing.assert_allclose(rt.infer(obs, return_tokens=True)[0]["logprobs"], ref["logprobs"], atol=1e-6)


@pytest.mark.parametrize("head", ["discrete", "l1"])
def test_save_load_round_trip_identical(tmp_path, head):
    rt = load_policy(preset="tiny", seed=2, overrides={"head": head})
    obs = make_obs(n=2)
    save_checkpoint(rt, tmp_path / "ck", step=10, max_shard_bytes=4_000_000)  # several shards
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert "config.json" in files and "dataset_statistics.json" in files and "model.safetensors.index.json" in files
    assert "proprio_projector--10_checkpoint.pt" in files
    assert ("action_head--10_checkpoint.pt" in files) == (head == "l1")
    assert sum(f.endswith(".safetensors") for f in files) > 1
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["architectures"] == ["OpenVLAForActionPrediction"] and cfg["text_config"]["vocab_size"] == 32064
    pre = json.loads((tmp_path / "ck" / "preprocessor_config.json").read_text())
    assert pre["means"][0] == pytest.approx([0.485, 0.456, 0.406]) and pre["means"][1] == pytest.approx([0.5, 0.5, 0.5])
    back = load_policy(checkpoint=tmp_path / "ck")
    assert back.metadata == rt.metadata
    a, b = rt.infer(obs, return_tokens=True), back.infer(obs, return_tokens=True)
    for x, y in zip(a, b):
        assert np.array_equal(x["actions"], y["actions"])
        if head == "discrete":
            assert np.array_equal(x["tokens"], y["tokens"]) and np.array_equal(x["logprobs"], y["logprobs"])


def _single_file_ckpt(tmp_path, rt):
    d = tmp_path / "ck"
    save_checkpoint(rt, d, step=1)
    return d


def test_checkpoint_errors_name_the_tensor(tmp_path, rt):
    from safetensors.torch import load_file, save_file

    d = _single_file_ckpt(tmp_path, rt)
    path = d / "model.safetensors"
    good = load_file(str(path))

    sd = dict(good)
    del sd["projector.fc2.bias"]
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="'projector.fc2.bias' is missing"):
        load_policy(checkpoint=d)

    sd = dict(good, **{"language_model.model.extra.weight": torch.zeros(2)})
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="model.safetensors: unexpected tensor 'language_model.model.extra.weight'"):
        load_policy(checkpoint=d)

    sd = dict(good)
    sd["language_model.lm_head.weight"] = torch.zeros(32000, 64)
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"'language_model.lm_head.weight' has shape \(32000, 64\); expected \(32064, 64\)"):
        load_policy(checkpoint=d)
    save_file(good, str(path))

    # the proprio projector file: DDP prefixes are fine, a wrong shape is named
    pp = d / "proprio_projector--1_checkpoint.pt"
    p = torch.load(pp, weights_only=True)
    torch.save({"module." + k: v for k, v in p.items()}, pp)
    load_policy(checkpoint=d)
    torch.save(dict(p, **{"fc1.weight": torch.zeros(64, 5)}), pp)
    with pytest.raises(CheckpointError, match=r"proprio_projector--1_checkpoint.pt: tensor 'fc1.weight' has shape \(64, 5\)"):
        load_policy(checkpoint=d)

    # pickle that would execute code is refused (weights_only=True)
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"fc1.weight": Evil()}, pp)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_policy(checkpoint=d)
    pp.unlink()
    with pytest.raises(CheckpointError, match="no 'proprio_projector--\\*checkpoint.pt' file"):
        load_policy(checkpoint=d)

    path.unlink()
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        load_policy(checkpoint=d)
    (d / "lora_adapter").mkdir()
    with pytest.raises(CheckpointError, match="only a LoRA adapter"):
        load_policy(checkpoint=d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_policy(checkpoint=d)


# Published OpenVLA-OFT (prism-dinosiglip-224px+7b, Llama-2 7B, vocab padded to 32064) layout:
# moojink/openvla-oft modeling_prismatic.py / projectors.py / action_heads.py, timm 0.9 ViT keys with
# LayerScale `gamma` renamed to `scale_factor` (ls_apply_patch).
PUBLISHED = {
    "vision_backbone.featurizer.cls_token": (1, 1, 1024),
    "vision_backbone.featurizer.reg_token": (1, 4, 1024),
    "vision_backbone.featurizer.pos_embed": (1, 256, 1024),
    "vision_backbone.featurizer.patch_embed.proj.weight": (1024, 3, 14, 14),
    "vision_backbone.featurizer.blocks.0.attn.qkv.weight": (3072, 1024),
    "vision_backbone.featurizer.blocks.0.ls1.scale_factor": (1024,),
    "vision_backbone.featurizer.blocks.23.ls2.scale_factor": (1024,),
    "vision_backbone.featurizer.blocks.23.mlp.fc1.weight": (4096, 1024),
    "vision_backbone.featurizer.norm.weight": (1024,),
    "vision_backbone.fused_featurizer.pos_embed": (1, 256, 1152),
    "vision_backbone.fused_featurizer.patch_embed.proj.weight": (1152, 3, 14, 14),
    "vision_backbone.fused_featurizer.blocks.26.attn.qkv.weight": (3456, 1152),
    "vision_backbone.fused_featurizer.blocks.26.mlp.fc1.weight": (4304, 1152),
    "vision_backbone.fused_featurizer.attn_pool.latent": (1, 1, 1152),
    "vision_backbone.fused_featurizer.attn_pool.kv.weight": (2304, 1152),
    "vision_backbone.fused_featurizer.attn_pool.mlp.fc1.weight": (4304, 1152),
    "vision_backbone.fused_featurizer.norm.weight": (1152,),
    "projector.fc1.weight": (8704, 2176),
    "projector.fc1.bias": (8704,),
    "projector.fc2.weight": (4096, 8704),
    "projector.fc3.weight": (4096, 4096),
    "projector.fc3.bias": (4096,),
    "language_model.model.embed_tokens.weight": (32064, 4096),
    "language_model.model.layers.0.self_attn.q_proj.weight": (4096, 4096),
    "language_model.model.layers.31.mlp.gate_proj.weight": (11008, 4096),
    "language_model.model.layers.31.mlp.down_proj.weight": (4096, 11008),
    "language_model.model.layers.31.post_attention_layernorm.weight": (4096,),
    "language_model.model.norm.weight": (4096,),
    "language_model.lm_head.weight": (32064, 4096),
}
PUBLISHED_COUNTS = {
    "vision_backbone.featurizer.blocks.": 24 * 14,  # norm1(2) qkv(2) proj(2) ls1 norm2(2) fc1(2) fc2(2) ls2
    "vision_backbone.fused_featurizer.blocks.": 27 * 12,
    "language_model.model.layers.": 32 * 9,
}


def test_oft_7b_layout_on_meta_device():
    cfg = load_preset("oft-7b")
    model = build_model(cfg, device="meta")
    main = model.main_state_dict()
    assert all(v.device.type == "meta" for v in main.values())
    for k, shape in PUBLISHED.items():
        assert k in main, f"published key {k} missing"
        assert tuple(main[k].shape) == shape, (k, tuple(main[k].shape), shape)
    for prefix, n in PUBLISHED_COUNTS.items():
        assert sum(k.startswith(prefix) for k in main) == n, prefix
    assert {k.split(".")[0] for k in main} == {"vision_backbone", "projector", "language_model"}
    assert not any("gamma" in k for k in main)
    assert sum(v.numel() for v in main.values()) == pytest.approx(7.54e9, rel=0.01)
    head = {k: tuple(v.shape) for k, v in model.action_head.state_dict().items()}
    assert head["model.fc1.weight"] == (4096, 7 * 4096) and head["model.fc2.weight"] == (7, 4096)
    assert head["model.mlp_resnet_blocks.1.ffn.1.weight"] == (4096, 4096)
    proprio = {k: tuple(v.shape) for k, v in model.proprio_projector.state_dict().items()}
    assert proprio == {"fc1.weight": (4096, 8), "fc1.bias": (4096,), "fc2.weight": (4096, 4096), "fc2.bias": (4096,)}


def test_cli_inspect(tmp_path, capsys, rt):
    from vla_robot.cli import main

    assert main(["policy", "inspect", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "Llama 2 layers, hidden 64, vocab 32064" in out and "8 steps x 6 action dims" in out
    assert "front, wrist" in out and "so101_twin" in out and "actions (8, 6)" in out
    save_checkpoint(rt, tmp_path / "ck")
    assert main(["policy", "inspect", str(tmp_path / "ck"), "--no-forward"]) == 0
    assert "discrete tokens" in capsys.readouterr().out
    assert main(["policy", "inspect", "--preset", "oft-7b", "--no-forward"]) == 0
    assert "7.71 B total" in capsys.readouterr().out
    assert main(["policy", "inspect", "--preset", "tiny", "--no-forward"]) == 0
    capsys.readouterr()
    assert main(["policy", "inspect", "--preset", "nope"]) == 1
    assert "unknown policy preset 'nope'" in capsys.readouterr().err
    assert main(["policy", "inspect"]) == 2


def test_image_preprocessing_follows_oft():
    from vla_robot.policy.image import center_crop, lanczos3_resize, preprocess_image

    const = np.full((120, 90, 3), 77, np.uint8)
    assert (lanczos3_resize(const, 56) == 77).all()  # weights are normalised
    ramp = np.tile(np.linspace(0, 255, 200)[None, :, None], (100, 1, 3)).round().astype(np.uint8)
    small = lanczos3_resize(ramp, 50).astype(int)
    assert (np.diff(small[25, 3:-3, 0]) >= 0).all()  # a ramp stays a ramp (antialiased, no ringing inside)
    assert abs(small[25, 25, 0] - 255 * (25.5 * 4 - 0.5) / 199) <= 2  # and is sampled at pixel centres
    same = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    assert np.array_equal(lanczos3_resize(same, 56), same)
    framed = np.zeros((100, 100, 3), np.uint8)
    framed[:2], framed[-2:], framed[:, :2], framed[:, -2:] = 255, 255, 255, 255  # a frame in the outer 2.6%
    cropped = center_crop(framed)
    assert cropped.shape == framed.shape and cropped.max() == 0  # the 90%-area crop removes it
    out = preprocess_image(np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8), 56)
    assert out.shape == (56, 56, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="must be uint8 HxWx3"):
        preprocess_image(np.zeros((10, 10, 3), np.float32), 56)


def test_bfloat16_runtime_and_published_config_without_our_block(tmp_path, rt):
    bf = load_policy(preset="tiny", seed=0, dtype="bfloat16")
    out = bf.infer(make_obs(n=2), return_tokens=True)
    assert out[0]["actions"].dtype == np.float32 and np.isfinite(out[0]["logprobs"]).all()
    # a config.json as OFT writes it (no "vla_robot" block): dimensions from text_config, the rest from
    # the oft-7b preset plus overrides, the head from which component files exist
    d = save_checkpoint(rt, tmp_path / "ck")
    cfg = json.loads((d / "config.json").read_text())
    ours = cfg.pop("vla_robot")
    (d / "config.json").write_text(json.dumps(cfg))
    back = load_policy(checkpoint=d, overrides={k: ours[k] for k in ("vision", "chunk_size", "action_dim", "cameras", "normalization")})
    assert back.metadata["head"] == "discrete" and back.metadata["proprio_dim"] == 6
    assert back.cfg.llm.hidden_size == 64 and back.cfg.llm.num_hidden_layers == 2
    a, b = rt.infer(make_obs(), return_tokens=True)[0], back.infer(make_obs(), return_tokens=True)[0]
    assert np.array_equal(a["tokens"], b["tokens"])


def test_checkpoint_own_tokenizer_files_are_used(tmp_path, rt):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "In:", "What", "action", "should", "the", "robot", "take", "to", "pick", "up", "cube?", "Out:"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    d = save_checkpoint(rt, tmp_path / "ck")
    (d / "vla_tokenizer.json").unlink()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(d)
    back = load_policy(checkpoint=d)
    from vla_robot.policy.tokenizer import HFTokenizer, prompt_ids

    assert isinstance(back.processor.tokenizer, HFTokenizer)
    ids = prompt_ids(back.processor.tokenizer, "Pick up cube")
    assert ids[0] == 1 and ids[-1] == 29871 and ids[1] == words.index("In:")
    assert back.infer(make_obs())[0]["actions"].shape == (8, 6)


def test_policy_batch_select_and_cat_keep_rows(rt):
    from vla_robot.policy.modeling import PolicyBatch

    obs = make_obs(n=3)
    full = rt.processor(obs)
    parts = PolicyBatch.cat([rt.processor(obs[:1]), rt.processor(obs[1:])])
    assert torch.equal(parts.prompt_lengths, full.prompt_lengths) and torch.equal(parts.input_ids, full.input_ids)
    assert torch.equal(parts.pixel_values, full.pixel_values) and torch.equal(parts.proprio, full.proprio)
    tokens = torch.tensor(np.stack([o["tokens"] for o in rt.infer(obs, return_tokens=True)]))
    with torch.no_grad():
        lp_all = rt.model.token_logprobs(full, tokens)
        lp_sel = rt.model.token_logprobs(full.select([2, 0]), tokens[[2, 0]])
    torch.testing.assert_close(lp_sel, lp_all[[2, 0]], atol=1e-4, rtol=0)


def test_numpy_only_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import vla_robot.policy, vla_robot.policy.config, vla_robot.policy.normalization, "
        "vla_robot.policy.action_tokenizer; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_checkpoint_preprocessor_means_are_used(tmp_path, rt):
    d = save_checkpoint(rt, tmp_path / "ck")
    pre = json.loads((d / "preprocessor_config.json").read_text())
    pre["means"][1] = [0.25, 0.25, 0.25]
    (d / "preprocessor_config.json").write_text(json.dumps(pre))
    back = load_policy(checkpoint=d)
    a, b = rt.processor(make_obs()).pixel_values, back.processor(make_obs()).pixel_values
    assert torch.equal(a[:, :3], b[:, :3]) and torch.allclose(b[:, 3:6], a[:, 3:6] + 0.5, atol=1e-5)  # (x-.25)/.5
    pre["stds"] = [[0.5, 0.5]]
    (d / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(CheckpointError, match="two RGB triples"):
        load_policy(checkpoint=d)


def test_bad_presets_and_options_are_named():
    import dataclasses

    from vla_robot.config import ConfigError, from_dict
    from vla_robot.policy.config import PolicyConfig

    section = from_dict(PolicyConfig, {"preset": "tiny", "seed": 3, "dtype": "bfloat16"})
    assert load_policy(**dataclasses.asdict(section)).dtype == "bfloat16"
    with pytest.raises(ConfigError, match="'dtype' is 'float16'"):
        from_dict(PolicyConfig, {"dtype": "float16"})

    with pytest.raises(ConfigError, match="unknown key 'chunk_sise'"):
        load_policy(preset="tiny", overrides={"chunk_sise": 4})
    with pytest.raises(ConfigError, match="'head' is 'gauss'"):
        load_policy(preset="tiny", overrides={"head": "gauss"})
    with pytest.raises(ValueError, match="unknown policy preset 'huge'; known presets: oft-7b, tiny"):
        load_policy(preset="huge")
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        load_policy(preset="tiny", dtype="float16")
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_policy(checkpoint="/nonexistent/ck")


def test_film_conditions_vision_on_language_and_round_trips(tmp_path, rt):
    film = load_policy(preset="tiny", seed=0, overrides={"film": True})
    a, b = make_obs(instruction="pick up the cube"), make_obs(instruction="open the drawer")
    with torch.no_grad():
        def patches(r, o):
            batch = r.batch(o)
            lang = r.model.average_language_embedding(batch) if r.cfg.film else None
            return r.model.vision_backbone(batch.pixel_values, lang)

        assert (patches(film, a) - patches(film, b)).abs().max() > 1e-4  # FiLM: words change what the ViTs see
        assert torch.equal(patches(rt, a), patches(rt, b))  # control: plain OFT vision ignores the words
    keys = film.model.state_dict()
    assert "vision_backbone.featurizer.blocks.0.scale.weight" in keys and "vision_backbone.fused_featurizer.blocks.1.block.attn.qkv.weight" in keys
    d = save_checkpoint(film, tmp_path / "ck", step=3)
    assert (d / "vision_backbone--3_checkpoint.pt").is_file()
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        main_keys = set(f.keys())
    assert main_keys == set(rt.model.main_state_dict())  # the plain OFT layout, FiLM layers in the .pt
    back = load_policy(checkpoint=d)
    assert back.cfg.film
    x, y = film.infer(a, return_tokens=True)[0], back.infer(a, return_tokens=True)[0]
    assert np.array_equal(x["tokens"], y["tokens"]) and np.array_equal(x["logprobs"], y["logprobs"])
    vb = d / "vision_backbone--3_checkpoint.pt"
    sd = torch.load(vb, weights_only=True)
    sd["vision_backbone.featurizer.blocks.0.block.attn.qkv.lora_A.default.weight"] = torch.zeros(2, 2)
    torch.save(sd, vb)
    with pytest.raises(CheckpointError, match="LoRA-wrapped"):
        load_policy(checkpoint=d)
    vb.unlink()
    with pytest.raises(CheckpointError, match="no 'vision_backbone--\\*checkpoint.pt' file"):
        load_policy(checkpoint=d)


def test_oft_7b_film_layout_on_meta_device():
    model = build_model(load_preset("oft-7b", {"film": True}), device="meta")
    sd = model.state_dict()
    assert tuple(sd["vision_backbone.featurizer.blocks.0.scale.weight"].shape) == (1024, 4096)
    assert tuple(sd["vision_backbone.fused_featurizer.blocks.26.shift.weight"].shape) == (1152, 4096)
    assert tuple(sd["vision_backbone.featurizer.blocks.0.block.ls1.scale_factor"].shape) == (1024,)
    main = model.main_state_dict()
    for k, shape in PUBLISHED.items():
        assert tuple(main[k].shape) == shape, k


def test_without_statistics_infer_says_what_is_missing():
    bare = load_policy(preset="tiny", overrides={"dataset_statistics": ""})
    assert bare.metadata["norm_key"] == ""
    with pytest.raises(ValueError, match="no dataset statistics are set"):
        bare.infer(make_obs())
    bare.set_norm_stats(normalization.identity_statistics(6, 6), "identity")
    out = bare.infer(make_obs(), return_tokens=True)[0]
    np.testing.assert_allclose(out["actions"], action_tokenizer.decode(out["tokens"]).reshape(8, 6), atol=1e-6)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    low=arrays(np.float64, 4, elements=st.floats(-10, 10)),
    width=arrays(np.float64, 4, elements=st.floats(1e-3, 10)),
    u=arrays(np.float64, (5, 4), elements=st.floats(0, 1)),
)
def test_normalize_tokenize_round_trip_property(low, width, u):
    part = {"q01": low.tolist(), "q99": (low + width).tolist(), "min": low.tolist(), "max": (low + width).tolist(),
            "mask": [True, True, True, False]}
    x = low + u * width
    x[:, 3] = u[:, 3] * 2 - 1  # the unmasked dimension lives in [-1, 1] already
    n = normalization.normalize(x, part)
    assert np.all(np.abs(n) <= 1)
    np.testing.assert_allclose(normalization.unnormalize(n, part), x, atol=1e-6 * (1 + np.abs(x)).max())
    back = normalization.unnormalize(action_tokenizer.decode(action_tokenizer.encode(n)), part)
    half_bin = np.append(width[:3], 2.0) / 255 + 1e-9
    assert np.all(np.abs(back - x) <= half_bin * (1 + 1e-6))
