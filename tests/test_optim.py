"""Muon / AdamW routing, Newton-Schulz, distributed orthogonalisation, schedules, errors."""

import copy
import os
import socket
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parallax_titan.job_config import LRScheduler as LRSchedulerExtra
from parallax_titan.job_config import Optimizer as OptimizerExtra
from parallax_titan.model.flavors import FLAVORS
from parallax_titan.model.model import ParallaxQwen3Model
from parallax_titan.optim.builder import build_optimizers
from parallax_titan.optim.routing import route_parameters
from parallax_titan.metrics import group_hyperparameters
from parallax_titan.optim.muon import Muon, newton_schulz
from parallax_titan.optim.schedules import annealed_weight_decay_factor, build_lr_schedulers, decay_phase


def optimizer_config(name="Muon", lr=1e-2, weight_decay=0.1, **extra):
    base = dict(name=name, lr=lr, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=weight_decay,
                implementation="for-loop", early_step_in_backward=False)
    fields = {**vars(OptimizerExtra()), **extra}
    return SimpleNamespace(**base, **fields)


def small_model(seed=0):
    torch.manual_seed(seed)
    model = ParallaxQwen3Model(replace(FLAVORS["debug-parallax"], max_seq_len=32))
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    return model


def polar(g):
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    return u @ vh


@pytest.mark.parametrize("shape", [(256, 768), (768, 256), (128, 1024), (512, 512)])
def test_newton_schulz_is_the_quintic_applied_to_singular_values(shape):
    """In float64, NS(G) = U f(S / ||G||_F) V^T with f the scalar quintic iterated 5 times."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = newton_schulz(g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    x = s / g.norm()
    for _ in range(5):
        x = 3.4445 * x - 4.7750 * x**3 + 2.0315 * x**5
    torch.testing.assert_close(out, u @ torch.diag(x) @ vh, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(256, 768), (768, 256), (128, 1024), (1024, 128)])
def test_newton_schulz_band_and_direction_on_model_shapes(shape):
    """Rectangular model-shaped matrices: every singular value inside the quintic's band, and the
    result points along the exact polar factor U V^T (float64 SVD); tall and wide alike."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = newton_schulz(g, dtype=torch.float32).double()
    s = torch.linalg.svdvals(out)
    assert s.max() < 1.25 and s.min() > 0.6, (float(s.min()), float(s.max()))
    p = polar(g)
    cos = (out * p).sum() / (out.norm() * p.norm())
    assert cos > 0.97, f"direction differs from U V^T: cosine {cos:.3f}"


def test_muon_matches_torch_optim_muon_in_bf16():
    """Same algorithm as the torch optimizer it extends, when asked for the same NS dtype."""
    torch.manual_seed(0)
    ref_p = torch.nn.Parameter(torch.randn(64, 48))
    our_p = torch.nn.Parameter(ref_p.detach().clone())
    ref = torch.optim.Muon([ref_p], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    ours = Muon([our_p], lr=0.02, weight_decay=0.1, scaling="match_rms_adamw", ns_dtype="bfloat16")
    for _ in range(3):
        g = torch.randn(64, 48)
        ref_p.grad, our_p.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    torch.testing.assert_close(our_p, ref_p, rtol=0, atol=1e-6)


def test_param_groups_that_orthogonalise_alike_share_one_newton_schulz(monkeypatch):
    """Two groups (a sweep's two runs: own lr and weight decay) step as two separate Muons would, with one
    batched Newton-Schulz per matrix shape instead of one per group and shape."""
    import parallax_titan.optim.muon as muon_module

    torch.manual_seed(0)
    shapes = [(32, 16), (16, 16), (32, 16)]
    a = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    b = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    a_alone, b_alone = ([torch.nn.Parameter(p.detach().clone()) for p in ps] for ps in (a, b))
    settings = dict(lr=0.02, weight_decay=0.1, ns_dtype="float32")
    shared = Muon([dict(params=a), dict(params=b, lr=0.05, weight_decay=0.0)], **settings)
    alone = [Muon(a_alone, **settings), Muon(b_alone, **dict(settings, lr=0.05, weight_decay=0.0))]
    calls = []
    real = muon_module.newton_schulz
    monkeypatch.setattr(muon_module, "newton_schulz", lambda g, *args: calls.append(tuple(g.shape)) or real(g, *args))
    for _ in range(3):
        for ps, ps_alone in ((a, a_alone), (b, b_alone)):
            for p, q in zip(ps, ps_alone):
                p.grad = torch.randn_like(p)
                q.grad = p.grad.clone()
        calls.clear()
        shared.step()
        assert sorted(calls) == [(2, 16, 16), (4, 32, 16)]  # both groups' matrices, stacked by shape
        for opt in alone:
            opt.step()
    for p, q in zip(a + b, a_alone + b_alone):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(a[0], b_alone[0])  # the groups do step differently


def test_groups_with_different_head_splits_are_orthogonalised_apart():
    p = torch.nn.Parameter(torch.zeros(32, 16))
    q = torch.nn.Parameter(torch.zeros(32, 16))
    opt = Muon([dict(params=[p], head_split=(0, 8)), dict(params=[q])], lr=1.0, weight_decay=0.0, momentum=0.0,
               nesterov=False, scaling="spectral", ns_dtype="float32")
    g = torch.randn(32, 16)
    p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    for block in (-p.detach()).split(8, dim=0):  # p per head, q as a whole matrix, from the same gradient
        assert torch.linalg.svdvals(block).min() > 0.6
    torch.testing.assert_close(-q.detach(), newton_schulz(g, dtype=torch.float32) * 2 ** 0.5, rtol=1e-5, atol=1e-6)


def test_spectral_scaling_and_per_head_blocks():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(4 * 16, 32))
    opt = Muon([dict(params=[p], head_split=(0, 16))], lr=1.0, weight_decay=0.0, momentum=0.0,
               nesterov=False, scaling="spectral", ns_dtype="float32")
    p.grad = torch.randn(64, 32)
    opt.step()
    update = -p.detach()
    for block in update.split(16, dim=0):  # every head block orthogonal on its own (scale sqrt(max(1,16/32))=1)
        s = torch.linalg.svdvals(block)
        assert s.max() < 1.25 and s.min() > 0.6
    whole = newton_schulz(p.grad, dtype=torch.float32) * (64 / 32) ** 0.5
    assert (whole - update).abs().max() > 1e-2  # per-head is not the whole-matrix update


def test_routing_of_the_parallax_model():
    routed = route_parameters(small_model())
    names = {g: [n for n, _ in ps] for g, ps in routed.items()}
    assert "layers.0.attention.wr.weight" in names["hidden"]
    assert "layers.0.feed_forward.w1.weight" in names["hidden"]
    assert names["embeddings"] == ["tok_embeddings.weight"]  # tied head: one tensor
    assert "layers.0.attention.r_norm.weight" in names["scalars"] and "norm.weight" in names["scalars"]
    assert all(p.ndim == 2 for _, p in routed["hidden"])


def test_routing_of_mads_compression_model():
    """MAD routes with the same rule: the transformer sits under `encoder.`, and the compression head's
    matrices (outside the blocks) go to AdamW with the embeddings."""
    from dataclasses import replace

    from eval.mad.tasks import PROTOCOL
    from eval.mad.train import MADRun, build_model, split_for_muon

    setting = replace(PROTOCOL["compression"].baseline, num_train_examples=8, num_test_examples=8)
    model = build_model(setting, MADRun(optimizer="muon"))
    names = {g: [n for n, _ in ps] for g, ps in route_parameters(model).items()}
    assert names["hidden"] and all(n.startswith("encoder.layers.") for n in names["hidden"])
    assert "encoder.layers.0.attention.wr.weight" in names["hidden"]
    assert {"encoder.tok_embeddings.weight", "encoder.output.weight", "decoder.1.weight",
            "unembed.1.weight"} <= set(names["embeddings"])
    hidden, rest = split_for_muon(model)
    assert len(hidden) == len(names["hidden"]) and len(hidden) + len(rest) == len(list(model.parameters()))


def test_a_parameter_of_more_than_two_dimensions_inside_a_block_fits_no_group():
    model = torch.nn.ModuleDict({"layers": torch.nn.ModuleDict({"0": torch.nn.Module()})})
    model.layers["0"].experts = torch.nn.Parameter(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"layers.0.experts of shape \(2, 3, 4\) fits no optimizer group"):
        route_parameters(model)


def test_container_groups_and_logged_hyperparameters():
    model = small_model()
    container = build_optimizers([model], optimizer_config(embed_lr=5e-3, scalar_weight_decay=0.0), None)
    hp = group_hyperparameters(container.optimizers)
    assert hp["lr/muon/hidden"] == 1e-2 and hp["lr/adamw/embeddings"] == 5e-3
    assert hp["weight_decay/adamw/scalars"] == 0.0 and hp["weight_decay/muon/hidden"] == 0.1
    adamw = build_optimizers([model], optimizer_config(name="AdamW"), None)
    assert "lr/adamw/hidden" in group_hyperparameters(adamw.optimizers)
    assert not any(isinstance(o, Muon) for o in adamw.optimizers)
    assert any("Muon  hidden" in line and "wr.weight" in line for line in container.routing_log)


def _loss(model, tokens):
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def _train(model, container, batches):
    losses = []
    for tokens in batches:
        container.zero_grad()
        loss = _loss(model, tokens)
        loss.backward()
        container.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["Muon", "AdamW"])
def test_state_dict_resume_reproduces_the_uninterrupted_run(name):
    batches = [torch.randint(0, 2048, (2, 17), generator=torch.Generator().manual_seed(i)) for i in range(6)]
    model = small_model()
    container = build_optimizers([model], optimizer_config(name=name, muon_ns_dtype="float32"), None)
    _train(model, container, batches[:3])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(container.state_dict())
    uninterrupted = _train(model, container, batches[3:])

    resumed = small_model(seed=99)
    resumed.load_state_dict(saved_model)
    resumed_container = build_optimizers([resumed], optimizer_config(name=name, muon_ns_dtype="float32"), None)
    resumed_container.load_state_dict(saved_opt)
    assert _train(resumed, resumed_container, batches[3:]) == uninterrupted


def test_bad_optimizer_input_is_a_clear_error():
    model = small_model()
    with pytest.raises(ValueError, match=r"\[optimizer\] name = 'Lion' is unknown"):
        build_optimizers([model], optimizer_config(name="Lion"), None)
    with pytest.raises(ValueError, match=r"\[optimizer\] muon_scaling = 'rms' is unknown"):
        build_optimizers([model], optimizer_config(muon_scaling="rms"), None)
    with pytest.raises(ValueError, match=r"\[optimizer\] lr must be a positive number"):
        build_optimizers([model], optimizer_config(lr=None), None)
    norm = model.norm.weight
    with pytest.raises(ValueError, match=r"Muon cannot take parameter norm.weight of shape \(256,\)"):
        Muon([norm], lr=1e-3, names={id(norm): "norm.weight"})


def test_weight_decay_annealing_follows_the_lr_decay_phase():
    start, steps = decay_phase(total_steps=100, warmup_steps=10, decay_ratio=0.2)
    assert steps == 20
    assert annealed_weight_decay_factor(start - 1, start, steps, 2.0) == 1.0
    assert annealed_weight_decay_factor(start + 9, start, steps, 2.0) == pytest.approx(0.25)
    assert annealed_weight_decay_factor(start + 19, start, steps, 2.0) == 0.0

    model = small_model()
    container = build_optimizers([model], optimizer_config(), None)
    config = SimpleNamespace(warmup_steps=10, total_steps=None, decay_ratio=0.2, decay_type="linear",
                             min_lr_factor=0.0, **vars(LRSchedulerExtra(weight_decay_anneal=True)))
    schedulers = build_lr_schedulers(container, config, training_steps=100)
    seen = []
    for _ in range(100):
        seen.append((container.optimizers[0].param_groups[0]["lr"], container.optimizers[0].param_groups[0]["weight_decay"]))
        schedulers.step()
    lrs, wds = zip(*seen)
    assert wds[0] == wds[80] == 0.1  # constant through warmup and the stable phase
    # at every decay step the wd factor is (lr factor)^2: both use torchtitan's decay progress
    for lr, wd in seen[81:]:
        assert wd / 0.1 == pytest.approx((lr / 1e-2) ** 2, abs=1e-9)
    assert wds[-1] < 0.001


# --- FSDP2-style sharded parameters on 2 CPU processes (gloo) ----------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_worker(rank, world, port, name, per_head, params0, grads, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import distribute_tensor, Shard

        mesh = init_device_mesh("cpu", (world,))
        params = [torch.nn.Parameter(distribute_tensor(p.clone(), mesh, [Shard(0)])) for p in params0]
        opt = _make_optimizer(name, params, per_head)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            opt.step()
        full = [p.full_tensor() for p in params]
        if rank == 0:
            torch.save([f.detach() for f in full], out_path)
        # both ranks done with every exchange before either tears gloo down: one tearing down while the other
        # still talks to it can abort the process (seen once in a full CI run, SIGABRT)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _make_optimizer(name, params, per_head):
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=False)
    groups = [dict(params=params[:2], head_split=(0, 4) if per_head else None), dict(params=params[2:])]
    return Muon(groups, lr=1e-2, weight_decay=0.1, ns_dtype="float32")


@pytest.mark.parametrize("name,per_head", [("Muon", False), ("Muon", True), ("AdamW", False)])
def test_sharded_step_on_two_ranks_equals_single_process(name, per_head, tmp_path):
    g = torch.Generator().manual_seed(0)
    # uneven row counts (7 rows over 2 ranks), tall and wide, several matrices per owner
    shapes = [(12, 8), (8, 20), (7, 5), (30, 6), (5, 9)]
    params0 = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]

    single = [torch.nn.Parameter(p.clone()) for p in params0]
    opt = _make_optimizer(name, single, per_head)
    for step_grads in grads:
        for p, gr in zip(single, step_grads):
            p.grad = gr.clone()
        opt.step()

    ctx = mp.get_context("spawn")
    out = tmp_path / "full.pt"
    port = _free_port()
    procs = [ctx.Process(target=_sharded_worker, args=(r, 2, port, name, per_head, params0, grads, str(out))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    result = torch.load(out)
    for got, want in zip(result, single):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


def test_orthogonalisation_work_is_spread_over_ranks():
    from parallax_titan.optim.muon import _assign_owners

    shapes = [torch.Size(s) for s in [(1024, 1024)] * 4 + [(3072, 1024)] * 6 + [(1024, 3072)] * 3]
    for world in (2, 4, 8):
        owners = _assign_owners(shapes, world)
        load = [sum(s.numel() * min(s) for s, o in zip(shapes, owners) if o == r) for r in range(world)]
        total = sum(load)
        assert max(load) <= total / world + max(s.numel() * min(s) for s in shapes), (world, load)
        assert len(set(owners)) == min(world, len(shapes))


def _fsdp_save_worker(rank, world, port, ckpt_dir, grads_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import distribute_tensor

        mesh = init_device_mesh("cpu", (world,))
        model = small_model()
        for block in model.layers.values():
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        container = build_optimizers([model], optimizer_config(muon_ns_dtype="float32"), None)
        grads = torch.load(grads_path)
        for step_grads in grads:  # two steps from fixed full gradients, sharded like the parameters
            for name, p in model.named_parameters():
                p.grad = distribute_tensor(step_grads[name], mesh, p.placements)
            container.step()
        dcp.save({"optimizer": container.state_dict()}, checkpoint_id=ckpt_dir)
        full = {n: p.full_tensor() for n, p in model.named_parameters()}
        if rank == 0:
            torch.save(full, os.path.join(ckpt_dir, "..", "params.pt"))
        dist.barrier()  # (as in _sharded_worker)
    finally:
        dist.destroy_process_group()


def test_optimizer_state_saved_on_two_fsdp_ranks_loads_on_one(tmp_path):
    """DCP resharding: Muon + AdamW state written by a 2-rank FSDP2 run loads into a 1-process run,
    and the next step there equals the next step of an unsharded run with the same history."""
    import torch.distributed.checkpoint as dcp

    model = small_model()
    g = torch.Generator().manual_seed(5)
    grads = [{n: torch.randn(p.shape, generator=g) * 1e-2 for n, p in model.named_parameters()} for _ in range(3)]
    torch.save(grads[:2], tmp_path / "grads.pt")
    ckpt = tmp_path / "ckpt"
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_fsdp_save_worker, args=(r, 2, port, str(ckpt), str(tmp_path / "grads.pt")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0

    # reference: the same three steps unsharded in this process
    reference = small_model()
    ref_opt = build_optimizers([reference], optimizer_config(muon_ns_dtype="float32"), None)
    for step_grads in grads:
        for n, p in reference.named_parameters():
            p.grad = step_grads[n].clone()
        ref_opt.step()

    # resumed: parameters and optimizer state from the 2-rank checkpoint, then the third step
    resumed = small_model()
    params = torch.load(tmp_path / "params.pt")  # named_parameters: the tied head is the embedding
    resumed.load_state_dict(params, strict=False)
    opt = build_optimizers([resumed], optimizer_config(muon_ns_dtype="float32"), None)
    for n, p in resumed.named_parameters():  # materialise state so DCP can load into it
        p.grad = torch.zeros_like(p)
    opt.step()
    resumed.load_state_dict(params, strict=False)
    state = {"optimizer": opt.state_dict()}
    dcp.load(state, checkpoint_id=str(ckpt))
    opt.load_state_dict(state["optimizer"])
    for n, p in resumed.named_parameters():
        p.grad = grads[2][n].clone()
    opt.step()
    for (n, got), (_, want) in zip(resumed.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=n)


def test_the_mad_sweep_optimizer_benchmark_steps_all_three_variants(monkeypatch, capsys):
    """scripts/bench_optimizer.py --mad-sweep, with its timer replaced by one call of each step (timings are
    the GPU's business; this checks the three variants build and step the six runs' models)."""
    import eval.mad.tasks as tasks
    import scripts.bench_optimizer as bench

    stepped = []
    monkeypatch.setattr(bench, "_median_ms", lambda fn: stepped.append(fn()) or 1.0)
    named = tasks.setting_by_name
    monkeypatch.setattr(tasks, "setting_by_name", lambda name: replace(named(name), seq_len=32))  # CPU-sized
    monkeypatch.setattr("sys.argv", ["bench_optimizer.py", "--mad-sweep", "--backend", "torch", "--mad-examples", "64"])
    bench.main()
    out = capsys.readouterr().out
    assert len(stepped) == 3 and [len(s) for s in stepped] == [7, 12, 6]  # 1 Muon + 6 AdamW; 6 x 2; 6
    assert "device: CPU" in out and "6 runs" in out and out.count("| 1.00 | 1.00x |") == 3
    assert "| one Muon for all runs |" in out and "| a Muon per run |" in out  # the train_sweep epochs ran
    with pytest.raises(ValueError, match="not in the protocol"):
        monkeypatch.setattr("sys.argv", ["bench_optimizer.py", "--mad-sweep", "--mad-setting", "recall[x=1]"])
        bench.main()
