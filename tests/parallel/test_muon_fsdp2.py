"""Muon under FSDP2 on 2 gloo processes == Muon on one process with the same global batch.

Each rank trains an FSDP2-sharded micro LLM on its half of every batch; the hidden matrices step with Muon (each
orthogonalised whole), the rest with AdamW. The one-process reference takes the same global batch as the same two
halves, accumulating ``loss / 2`` of each (the gradients FSDP2's averaging makes, to the bit), and steps AdamW with
the kernel the sharded parameters get (not the fused one): the weights are then equal to the bit after three steps.
Without those two choices they drift apart by ~1e-3 by step 3, not from the sharding: Newton-Schulz runs in bf16,
and a last-bit difference in a gradient rounds some elements the other way, which the next steps amplify. The
optimizer state also survives the full-state-dict round trip Lightning's FSDP2 checkpoints make: a model and
optimizer restored from it take a fourth step identical to the original's.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.gloo import run_on_ranks
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.optim._muon import _zeropower_via_newtonschulz

from mm_lightning import build_backbone
from mm_lightning.checkpoint import META_KEY
from mm_lightning.handoff import carry_optimizer_state, optimizer_param_names
from mm_lightning.optim import OptimizerConfig, ShardedMuon, build_optimizer
from mm_lightning.parallel import parallelize
from mm_lightning.parallel.newton_schulz import orthogonalise_all

# ffn_hidden 75: the MLP's matrices split 38 + 37 rows, FSDP2's uneven shards
MICRO = {"vocab_size": 97, "n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 75}
WORLD, ROWS, SEQ, STEPS, LR = 2, 4, 16, 3, 2e-2


def micro_llm() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("llm", "tiny", **MICRO)


def global_batch(step: int) -> torch.Tensor:
    return torch.randint(0, MICRO["vocab_size"], (ROWS, SEQ), generator=torch.Generator().manual_seed(step))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    F.cross_entropy(model(ids).flatten(0, 1), ids.roll(-1, dims=1).flatten()).backward()
    optimizer.step()
    optimizer.zero_grad()


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.full_tensor() if isinstance(p, DTensor) else p.detach().clone() for name, p in
            model.named_parameters()}  # fmt: skip


def sharded_run(mesh) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = micro_llm()
    parallelize(model, model.blocks, mesh)
    return model, build_optimizer(model, OptimizerConfig(name="muon"), lr=LR)


# rows split unevenly (75: 38 + 37; 1: 1 + 0), wide and tall (Newton-Schulz transposes these), a last bucket of one
ODD_SHAPES = [(75, 64), (5, 7), (1, 9), (64, 75), (9, 4)]


def odd_matrices() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(shape, generator=generator) for shape in ODD_SHAPES]


def newton_schulz(matrix: torch.Tensor) -> torch.Tensor:
    return _zeropower_via_newtonschulz(matrix, (3.4445, -4.7750, 2.0315), 5, 1e-7)


def orthogonalise_odd_shapes(mesh) -> list[torch.Tensor]:
    """Each row-sharded matrix orthogonalised by its owner; one replicated and one plain one by every rank."""
    matrices = odd_matrices()
    updates = [distribute_tensor(m, mesh, [Shard(0)]) for m in matrices]
    updates += [distribute_tensor(matrices[0], mesh, [Replicate()]), matrices[1]]
    results = orthogonalise_all(updates, newton_schulz)
    assert [tuple(r.placements) for r in results[:-1]] == [(Shard(0),)] * len(ODD_SHAPES) + [(Replicate(),)]
    return [r.full_tensor() if isinstance(r, DTensor) else r for r in results]


def fsdp_worker(rank: int, world_size: int, out_dir: Path) -> None:
    mesh = init_device_mesh("cpu", (world_size,))
    odd_shapes = orthogonalise_odd_shapes(mesh)
    rows = slice(rank * ROWS // world_size, (rank + 1) * ROWS // world_size)
    model, optimizer = sharded_run(mesh)
    for step in range(STEPS):
        train_step(model, optimizer, global_batch(step)[rows])
    after_steps = full_weights(model)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # what save_distributed_checkpoint=False saves
    saved = {"model": get_model_state_dict(model, options=full),
             "optimizer": get_optimizer_state_dict(model, optimizer, options=full)}  # fmt: skip
    if rank == 0:  # through a file, as a checkpoint goes: a state loaded from memory would share tensors (``step``)
        torch.save(saved, out_dir / "full.ckpt")
        saved = torch.load(out_dir / "full.ckpt", weights_only=True)
    restored, restored_optimizer = sharded_run(mesh)
    load = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)  # what Lightning's resume loads with
    set_model_state_dict(restored, saved["model"] if rank == 0 else {}, options=load)
    set_optimizer_state_dict(restored, restored_optimizer, saved["optimizer"] if rank == 0 else {}, options=load)
    for each_model, each_optimizer in ((model, optimizer), (restored, restored_optimizer)):
        train_step(each_model, each_optimizer, global_batch(STEPS)[rows])
    result = {
        "after_steps": after_steps,
        "continued": full_weights(model),
        "restored": full_weights(restored),
        "odd_shapes": odd_shapes,
        "muon_param_types": sorted({type(p).__name__ for g in optimizer.muon.param_groups for p in g["params"]}),
    }
    if rank == 0:
        torch.save(result, out_dir / "fsdp.pt")


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out_dir = tmp_path_factory.mktemp("muon_fsdp2")
    run_on_ranks(fsdp_worker, WORLD, out_dir)
    return torch.load(out_dir / "fsdp.pt", weights_only=True)


def test_sharded_muon_matches_one_process_on_the_global_batch(fsdp, one_thread):
    model = micro_llm()
    optimizer = build_optimizer(model, OptimizerConfig(name="muon"), lr=LR)
    for group in optimizer.adamw.param_groups:
        group["fused"] = None  # the AdamW kernel torch picks for the sharded (DTensor) parameters
    initial = full_weights(model)
    for step in range(STEPS):
        for half in global_batch(step).chunk(WORLD):  # the ranks' rows, as micro-batches
            (F.cross_entropy(model(half).flatten(0, 1), half.roll(-1, dims=1).flatten()) / WORLD).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert fsdp["muon_param_types"] == ["DTensor"]  # the matrices really were shards
    single = full_weights(model)
    assert fsdp["after_steps"].keys() == single.keys()
    for name, weight in single.items():
        assert not torch.equal(weight, initial[name]), f"{name} did not train"
        torch.testing.assert_close(fsdp["after_steps"][name], weight, rtol=0, atol=0, msg=name)


def test_owners_orthogonalise_unevenly_sharded_matrices_as_one_process_does(fsdp):
    matrices = odd_matrices()
    expected = [newton_schulz(m.bfloat16()) for m in [*matrices, matrices[0], matrices[1]]]
    assert len(fsdp["odd_shapes"]) == len(expected)
    for got, want in zip(fsdp["odd_shapes"], expected, strict=True):
        assert torch.equal(got, want)


def test_optimizer_state_round_trips_through_a_full_state_dict(fsdp):
    for name, weight in fsdp["continued"].items():
        torch.testing.assert_close(fsdp["restored"][name], weight, rtol=0, atol=0, msg=name)


def test_single_process_steps_as_torch_muon(one_thread):
    ours, reference = micro_llm(), micro_llm()
    hidden = [p for name, p in reference.named_parameters() if p.dim() == 2 and ".blocks." in f".{name}"]
    torch_muon = torch.optim.Muon(hidden, lr=LR, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw")
    optimizer = build_optimizer(ours, OptimizerConfig(name="muon"), lr=LR)
    assert isinstance(optimizer.muon, ShardedMuon)
    for step in range(2):
        ids = global_batch(step)
        for model in (ours, reference):
            F.cross_entropy(model(ids).flatten(0, 1), ids.roll(-1, dims=1).flatten()).backward()
        optimizer.muon.step()
        torch_muon.step()
        optimizer.zero_grad()
        torch_muon.zero_grad()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b), name


def trained_muon() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = micro_llm()
    optimizer = build_optimizer(model, OptimizerConfig(name="muon"), lr=LR)
    train_step(model, optimizer, global_batch(0))
    return model, optimizer


def older_form(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer``'s state as MuonWithAdamW saved it before FSDP2 support: a state dict per inner optimizer."""
    flat, muon_ids = optimizer.state_dict(), len(optimizer.muon.param_groups[0]["params"])
    return {
        "muon": {"state": {i: flat["state"][i] for i in range(muon_ids)}, "param_groups": flat["param_groups"][:1]},
        "adamw": {"state": {i - muon_ids: s for i, s in flat["state"].items() if i >= muon_ids},
                  "param_groups": [{**g, "params": [i - muon_ids for i in g["params"]]}
                                   for g in flat["param_groups"][1:]]},
    }  # fmt: skip


def assert_same_state(optimizer: torch.optim.Optimizer, expected: torch.optim.Optimizer) -> None:
    assert optimizer.muon.state is optimizer.adamw.state is optimizer.state
    state, reference = optimizer.state_dict()["state"], expected.state_dict()["state"]
    assert state.keys() == reference.keys()
    for index, moments in reference.items():
        for key, value in moments.items():
            torch.testing.assert_close(state[index][key], value, rtol=0, atol=0)


@pytest.mark.parametrize("form", ["flat", "older"])
def test_muon_state_dicts_load_and_hand_off(form, tmp_path):
    model, optimizer = trained_muon()
    saved = optimizer.state_dict() if form == "flat" else older_form(optimizer)
    fresh = build_optimizer(micro_llm(), OptimizerConfig(name="muon"), lr=LR)
    fresh.load_state_dict(saved)
    assert_same_state(fresh, optimizer)
    # the ``continue`` hand-off reads the same state from a checkpoint, by parameter name
    meta = {"optimizer_param_names": optimizer_param_names(model, optimizer)}
    torch.save({META_KEY: meta, "optimizer_states": [saved]}, tmp_path / "stage.ckpt")
    next_model = micro_llm()
    carried_into = build_optimizer(next_model, OptimizerConfig(name="muon"), lr=LR)
    carried, fresh_names = carry_optimizer_state(carried_into, next_model, str(tmp_path / "stage.ckpt"))
    assert fresh_names == [] and len(carried) == len(list(model.parameters()))
    assert_same_state(carried_into, optimizer)


def test_lightning_fsdp2_checkpoint_restores_the_muon_state(tmp_path):
    """Through Lightning: ``ModelParallelStrategy`` saves a full checkpoint of the stage's Muon + AdamW state and a
    resume restores every moment to the bit (``helpers/muon_fsdp2_resume.py``, ~15 s)."""
    tests = Path(__file__).parents[1]
    script = tests / "helpers" / "muon_fsdp2_resume.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    saved, restored = (torch.load(tmp_path / f"{name}.pt", weights_only=True) for name in ("saved", "restored"))
    assert saved["global_step"] == restored["global_step"] == 2
    assert saved["state"].keys() == restored["state"].keys()
    kinds = {name: sorted(state) for name, state in saved["state"].items()}
    assert kinds["llm.blocks.0.mlp.down.weight"] == ["momentum_buffer"]
    assert kinds["llm.norm.weight"] == ["exp_avg", "exp_avg_sq", "step"]
    for name, state in saved["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(restored["state"][name][key], value, rtol=0, atol=0, msg=f"{name} {key}")
