"""LoRA in the learner (issue 19): the update, the adapter hot-swap over the real weights socket, checkpoints.

OFT's LoRA settings, which rl/lora.py follows, are in moojink/openvla-oft vla-scripts/finetune.py
(``LoraConfig(r=32, lora_alpha=min(32, 16), lora_dropout=0.0, target_modules="all-linear",
init_lora_weights="gaussian")``); its merge tool is vla-scripts/merge_lora_weights_and_save.py
(``PeftModel.from_pretrained(vla, <dir>/lora_adapter).merge_and_unload()``).
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_rl_learner import make_group, observation

from vla_robot.policy import CheckpointError, load_policy, save_checkpoint
from vla_robot.policy.lora import LoraBaseUnknown, adapter_key, merged_weight
from vla_robot.rl.config import preset
from vla_robot.rl.grpo import RolloutBatch, grpo_update
from vla_robot.rl.learner import Learner
from vla_robot.rl.lora import ADAPTER_DIR, BASE_FILE, target_modules

torch.set_num_threads(1)


def lora_cfg(**kw):
    return preset("tiny", **{"group_size": 4, "batch_groups": 1, "mini_batch_size": 2, "mode": "rl", "lr": 1e-2,
                             "lora_rank": 32, **kw})


def merged_state(learner) -> dict:
    with learner.adapter.merged():
        return {k: v.detach().clone() for k, v in learner.runtime.model.state_dict().items()}


def test_targets_are_ofts_all_linear_and_only_the_adapter_and_fully_trained_modules_train():
    rt = load_policy(preset="tiny", seed=0)
    linear = [n for n, m in rt.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert target_modules(rt.model)  # named before peft replaces the layers
    learner = Learner(rt, lora_cfg())
    # peft's "all-linear" leaves out the output layer; the proprio projector is OFT's own module, trained in full
    assert sorted(learner.adapter.targets) == sorted(n for n in linear if n != "language_model.lm_head"
                                                      and not n.startswith("proprio_projector."))
    trained = {n for n, p in rt.model.named_parameters() if p.requires_grad}
    assert trained == {n for n in trained if ".lora_A." in n or ".lora_B." in n or n.startswith("proprio_projector.")}
    assert len(trained) == 2 * len(learner.adapter.targets) + 4
    layer = learner.adapter.layers["language_model.model.layers.0.self_attn.q_proj"]
    assert layer.r["default"] == 32 and layer.scaling["default"] == 16 / 32  # alpha = min(r, 16)
    assert float(layer.lora_B["default"].weight.detach().abs().max()) == 0.0  # B starts at zero: the policy is unchanged
    assert abs(float(layer.lora_A["default"].weight.detach().std()) - 1 / 32) < 0.005  # gaussian init, std 1/r


def test_a_lora_grpo_update_is_the_same_update_computed_by_hand():
    """Reference: the same GRPO update through plain torch, each target's weight W0 + (alpha/r)·B·A with A and B
    leaf tensors (no peft), AdamW on A, B and the proprio projector; two optimiser steps (the first moves only
    B: A's gradient is Bᵀ·dL/dW = 0 while B is 0)."""
    rng = np.random.default_rng(3)
    rt, ref = load_policy(preset="tiny", seed=0), load_policy(preset="tiny", seed=0)
    episodes = make_group(rt, 0, [1, 0, 0, 1], rng, steps=2)
    cfg = lora_cfg()
    learner = Learner(rt, cfg, seed=5)
    factors = {}
    for p in ref.model.parameters():
        p.requires_grad_(False)
    for name, layer in learner.adapter.layers.items():
        lin = ref.model.get_submodule(name)
        a = layer.lora_A["default"].weight.detach().clone().requires_grad_(True)  # peft's random A, same start
        b = torch.zeros(lin.out_features, 32, requires_grad=True)
        factors[name] = (a, b)
        lin.forward = (lambda lin, a, b: lambda x: F.linear(x, lin.weight + 0.5 * (b @ a), lin.bias))(lin, a, b)
    proprio = list(ref.model.proprio_projector.parameters())
    for p in proprio:
        p.requires_grad_(True)
    params = [t for ab in factors.values() for t in ab] + proprio
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    grads = {"peft": [], "ref": []}  # each optimiser step's gradients, in the same parameter order
    order = [p for n in factors for p in (learner.adapter.layers[n].lora_A["default"].weight,
                                           learner.adapter.layers[n].lora_B["default"].weight)]
    order += list(rt.model.proprio_projector.parameters())
    def grad(p):  # None: a module the forward does not use (SigLIP's attention-pool head)
        return torch.zeros_like(p) if p.grad is None else p.grad.clone()
    learner.optimizer.register_step_pre_hook(lambda *_: grads["peft"].append([grad(p) for p in order]))
    opt.register_step_pre_hook(lambda *_: grads["ref"].append([grad(p) for p in params]))
    for e in episodes:
        learner.add(e)
    stats = learner.step()
    rows = [(i, s) for i, e in enumerate(episodes) for s in e.steps]
    tokens = torch.tensor(np.stack([s.tokens for _, s in rows]))
    batch = RolloutBatch(tokens, torch.tensor(np.stack([s.logprobs for _, s in rows])),
                         torch.tensor(np.stack([s.executed for _, s in rows])),
                         rewards=torch.tensor([float(e.label) for e in episodes]), group_ids=torch.zeros(4, dtype=torch.long),
                         trajectory=torch.tensor([i for i, _ in rows]))

    def logprob_fn(idx, temperature):
        return ref.model.token_logprobs(ref.batch([rows[i][1].observation for i in idx.tolist()]), tokens[idx], temperature)
    want = grpo_update(logprob_fn, batch, opt, params, cfg, torch.Generator().manual_seed(5))

    assert stats["opt_steps"] == want["opt_steps"] == 2
    assert stats["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-7)
    for step, rtol in ((0, 1e-4), (1, 1e-3)):  # step 2 starts from weights that differ by float rounding
        for g, w in zip(grads["peft"][step], grads["ref"][step]):
            torch.testing.assert_close(g, w, rtol=rtol, atol=1e-3 * float(w.abs().max()) + 1e-12)
    # the weights after AdamW: peft computes B(A x), the reference (W0 + s·B·A) x, and where a gradient is near
    # Adam's eps its step m / (sqrt(v) + eps) magnifies that float rounding (a few elements in 10^4 differ by
    # up to a few % of a step, lr); a wrong update is off by a good part of lr nearly everywhere
    diffs = [(p - q).detach().abs().flatten() for p, q in zip(order, params)]
    assert float(torch.cat(diffs).max()) < 0.1 * cfg.lr and float(torch.cat(diffs).mean()) < 1e-5 * cfg.lr
    assert any(float(b.detach().abs().max()) > 1e-3 for _, b in factors.values())  # the update did move the adapter


def test_the_adapter_hot_swap_serves_the_learners_merged_weights(tmp_path):
    """Two real servers: one fed the adapter over its weights socket, one loaded from the learner's merged
    export. Only the adapter and the fully trained proprio projector travel (the base once, to a server
    that does not hold it); two pushes later the served weights are the export's bit for bit (no drift)."""
    from vla_robot.serving import PolicyClient, PolicyServer, WeightPublisher

    rng = np.random.default_rng(4)
    rt = load_policy(preset="tiny", seed=0)
    learner = Learner(rt, lora_cfg(), out_dir=tmp_path)
    served = load_policy(preset="tiny", seed=0)
    server = PolicyServer(served, bind="tcp://127.0.0.1:*", weights_bind="tcp://127.0.0.1:*").start()
    publisher = WeightPublisher(server.weights_address, timeout_s=30)
    pushes = []

    def publish(state, version, **lora):
        pushes.append((set(state), publisher.push(state, version, **lora)))
    learner.publish = publish
    try:
        for start in range(2):
            for e in make_group(rt, start, [1, 0, 0, 1], rng, version=learner.version):
                learner.add(e)
            assert learner.step()["opt_steps"]
        merged_srv = PolicyServer(load_policy(checkpoint=tmp_path / "checkpoint"), bind="tcp://127.0.0.1:*",
                                  weights_bind=None).start()
        try:
            probes = [observation(rng) for _ in range(3)]
            with PolicyClient(server.address, timeout_s=30) as c1, PolicyClient(merged_srv.address, timeout_s=30) as c2:
                hot = c1.infer(probes, mode="greedy", return_tokens=True)
                ref = c2.infer(probes, mode="greedy", return_tokens=True)
        finally:
            merged_srv.stop()
    finally:
        publisher.close()
        server.stop()
    assert [r["version"] for r in hot] == [2, 2, 2]
    for h, r in zip(hot, ref):
        np.testing.assert_array_equal(h["tokens"], r["tokens"])
        np.testing.assert_allclose(h["logprobs"], r["logprobs"], atol=1e-5)
        np.testing.assert_allclose(h["actions"], r["actions"], atol=1e-5)
    export = load_policy(checkpoint=tmp_path / "checkpoint").model.state_dict()
    assert all(torch.equal(served.model.state_dict()[k], export[k]) for k in export)

    adapted = {f"{n}.weight" for n in learner.adapter.targets}
    adapter = {adapter_key(w, p) for w in adapted for p in ("lora_A", "lora_B")}
    proprio = {n for n in rt.model.state_dict() if n.startswith("proprio_projector.")}
    first, second = pushes
    assert first[0] == adapter | proprio and second[0] == adapter | proprio  # nothing frozen travels
    assert first[1]["tensors"] == len(adapter | proprio) + len(adapted)  # the first push: the server lacked the base
    assert second[1]["tensors"] == len(adapter | proprio)
    full = sum(v.numel() * v.element_size() for v in served.model.state_dict().values())
    assert second[1]["bytes"] < 0.25 * full


def test_repeated_adapter_pushes_do_not_drift_in_bfloat16():
    """Fifty pushes end where one push of the last adapter would: the runtime merges from the base each time
    (summed bf16 deltas would walk away by rounding)."""
    rt = load_policy(preset="tiny", seed=0, dtype="bfloat16")
    names = ["language_model.model.layers.0.mlp.up_proj.weight", "projector.fc3.weight"]
    own = rt.model.state_dict()
    base = {n: own[n].clone() for n in names}
    gen = torch.Generator().manual_seed(0)
    for version in range(1, 51):
        push = {}
        for n in names:
            out_f, in_f = own[n].shape
            push[adapter_key(n, "lora_A")] = (torch.randn(4, in_f, generator=gen) * 0.05).bfloat16()
            push[adapter_key(n, "lora_B")] = (torch.randn(out_f, 4, generator=gen) * 0.05).bfloat16()
            if version == 1:
                push[adapter_key(n, "lora_base")] = base[n]
        rt.load_weights(push, version, lora_base="b0")
    for n in names:
        want = merged_weight(base[n], push[adapter_key(n, "lora_A")], push[adapter_key(n, "lora_B")])
        assert torch.equal(rt.model.state_dict()[n], want)


def test_an_adapter_for_a_base_the_server_does_not_hold_is_refused_and_nothing_changes():
    rt = load_policy(preset="tiny", seed=0)
    n = "projector.fc3.weight"
    before = rt.model.state_dict()[n].clone()
    push = {adapter_key(n, "lora_A"): torch.ones(2, 64), adapter_key(n, "lora_B"): torch.ones(64, 2)}
    with pytest.raises(LoraBaseUnknown, match="push it with the adapter"):
        rt.load_weights(push, 1, lora_base="someone-elses")
    with pytest.raises(ValueError, match=r"expected A \[r, 64\] and B \[64, r\]"):
        rt.load_weights({**push, adapter_key(n, "lora_B"): torch.ones(64, 3), adapter_key(n, "lora_base"): before},
                        1, lora_base="b")
    assert torch.equal(rt.model.state_dict()[n], before) and rt.version == 0
    rt.load_weights({**push, adapter_key(n, "lora_base"): before}, 1, lora_base="b")
    rt.load_weights({n: before}, 2)  # a plain push: the weights no longer follow the base
    with pytest.raises(LoraBaseUnknown):
        rt.load_weights(push, 3, lora_base="b")


def test_checkpoint_round_trip_holds_the_adapter_the_base_and_a_merged_oft_export(tmp_path):
    """The adapter as peft writes it (peft's own PeftModel.from_pretrained + merge_and_unload, what OFT's merge
    tool runs, gives the exported merged weights), the export serves as it is, and a resumed learner holds the
    same adapter, base and optimiser state."""
    import peft

    rng = np.random.default_rng(8)
    rt = load_policy(preset="tiny", seed=0)
    learner = Learner(rt, lora_cfg(), out_dir=tmp_path)
    for e in make_group(rt, 0, [1, 0, 0, 1], rng):
        learner.add(e)
    learner.step()
    ckpt = tmp_path / "checkpoint"
    merged = merged_state(learner)
    config = json.loads((ckpt / ADAPTER_DIR / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"], config["init_lora_weights"]) == (32, 16, 0.0, "gaussian")
    assert (ckpt / BASE_FILE).stat().st_ino == (tmp_path / BASE_FILE).stat().st_ino  # one base file, linked

    served = load_policy(checkpoint=ckpt).model.state_dict()
    assert set(served) == set(merged) and all(torch.equal(served[k], merged[k]) for k in merged)
    fresh = load_policy(preset="tiny", seed=0)  # the base, as OFT's merge tool loads it
    merged_by_peft = peft.PeftModel.from_pretrained(fresh.model, str(ckpt / ADAPTER_DIR)).merge_and_unload().state_dict()
    for k in merged:
        if not k.startswith("proprio_projector."):  # OFT keeps it in proprio_projector--*_checkpoint.pt
            torch.testing.assert_close(merged_by_peft[k], merged[k], rtol=1e-6, atol=1e-6)

    with pytest.raises(CheckpointError, match="carries a LoRA adapter"):  # peft's layer names are no OFT layout
        save_checkpoint(rt, tmp_path / "unmerged")

    back = Learner.resume(ckpt, lora_cfg())
    assert back.adapter.base_id == learner.adapter.base_id and back.version == 1
    a, b = rt.model.state_dict(), back.runtime.model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # base W0, factors, proprio projector
    sa, sb = learner.optimizer.state_dict()["state"], back.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    with pytest.raises(ValueError, match="lora_rank=32"):
        Learner.resume(ckpt, lora_cfg(lora_rank=0))


def test_learn_flags_choose_lora_or_full_fine_tuning():
    import argparse

    from vla_robot.rl.cli import _learn_config, learn_args

    parser = argparse.ArgumentParser()
    learn_args(parser)
    cfg = lambda *a: _learn_config(parser.parse_args(["--dataset", "d", *a]))  # noqa: E731
    assert cfg("--preset", "oft-7b").lora_rank == 32  # OFT's rank, the 7B's default
    assert cfg("--preset", "oft-7b", "--lora-rank", "0").lora_rank == 0
    assert cfg().lora_rank == 0 and cfg("--lora-rank", "8").lora_rank == 8  # tiny: full unless asked
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        cfg("--lora-rank", "-1")


def test_hybrid_sft_trains_the_adapter_where_a_group_never_succeeds():
    rng = np.random.default_rng(9)
    rt = load_policy(preset="tiny", seed=0)
    demo = make_group(rt, "demo", [1], rng, steps=2)
    learner = Learner(rt, lora_cfg(mode="hybrid"), demos={"reach": demo})
    before = {k: v.detach().clone() for k, v in rt.model.state_dict().items()}
    for e in make_group(rt, 0, [0, 0, 0, 0], rng):
        learner.add(e)
    stats = learner.step()
    assert stats["groups_sft"] == 1 and stats["sft_trajectories"] == 4 and stats["opt_steps"] == 2
    after = rt.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".lora_" in k or k.startswith("proprio_projector.") for k in moved)  # nothing frozen moved


def test_learn_lora_serves_the_adapter_and_a_resumed_learner_serves_a_fresh_server_too(tmp_path, capsys):
    """`vla-robot learn --lora-rank 32` on a recorded dataset pushes its update to a server; resumed later
    against a new server (which lacks the base) it serves the same weights there (the base goes once)."""
    from test_rl_learn_cli import record_groups

    from vla_robot.cli import main
    from vla_robot.serving import PolicyServer

    ds, out = tmp_path / "ds", tmp_path / "learner"
    record_groups(ds, 1)
    servers = [load_policy(preset="tiny", seed=0) for _ in range(2)]
    argv = ["learn", "--dataset", str(ds), "--out", str(out), "--set", "group_size=2", "--mode", "rl",
            "--lora-rank", "32", "--idle-timeout", "2"]
    for rt in servers:
        with PolicyServer(rt, bind="tcp://127.0.0.1:*", weights_bind="tcp://127.0.0.1:*") as server:
            assert main([*argv, "--weights", server.weights_address]) == 0
    text = capsys.readouterr().out
    assert "version 1 serving" in text and "resuming from" in text and "LoRA rank 32 (249,088 trained values" in text
    assert servers[0].version == servers[1].version == 1
    a, b = servers[0].model.state_dict(), servers[1].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["projector.fc3.weight"], load_policy(preset="tiny", seed=0).model.state_dict()["projector.fc3.weight"])
    assert main([*argv[:-4], "--lora-rank", "0", "--idle-timeout", "1"]) == 2
    assert "learn --lora-rank 32" in capsys.readouterr().err


def test_in_bfloat16_the_learner_computes_the_log_probs_of_the_weights_it_serves():
    """The on-policy contract with LoRA: the learner's forward uses the merged weights the server computes, so
    tokens a server sampled after an adapter push get back their log-probs exactly, also in bfloat16 (peft's
    W0 x + s·B(A x) rounds otherwise: median |r - 1| 2.5e-3 on this model)."""
    rng = np.random.default_rng(0)
    rt = load_policy(preset="tiny", seed=0, dtype="bfloat16")
    learner = Learner(rt, lora_cfg(lr=3e-3), note=lambda text: None)
    for start in range(2):
        for e in make_group(rt, start, [1, 0, 0, 1], rng, version=learner.version):
            learner.add(e)
        assert learner.step()["ratio_acting"]["max_abs"] == 0.0
    served = load_policy(preset="tiny", seed=0, dtype="bfloat16")
    served.load_weights({**learner.adapter.update(), **learner.adapter.base()}, 2, lora_base=learner.adapter.base_id)
    obs = [observation(rng) for _ in range(8)]
    res = served.infer(obs, mode="sample", temperature=1.6, return_tokens=True, seeds=list(range(8)))
    with torch.no_grad():
        mine = rt.model.token_logprobs(rt.batch(obs), torch.tensor(np.stack([r["tokens"] for r in res])), 1.6)
    np.testing.assert_array_equal(mine.float().numpy(), np.stack([r["logprobs"] for r in res]))
