import copy
import hashlib
import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

from nat2.app.config import EPS_PHASES
from supernets import CheckpointError, Supernet, load_splits, recalibrate_bn
from supernets.aep import aep_loss, aep_weights, as_exits, ensemble_logits
from supernets.checkpoint import atomic_save, load_checkpoint, load_source
from supernets.distributed import Dist, ResolutionBatchSampler
from supernets.kd import freeze, kd_loss, teacher_logits
from supernets.phases import PhaseError, parse_phases, validation_grid
from supernets.supernet import default_space
from supernets.train import PhaseTrainer, TrainingError, TrainOptions, train_supernet
import supernets.train as train_module

VARIANTS = list(itertools.product([False, True], [False, True], [False, True]))  # dense, parallel, early_exits
OPTIONS = TrainOptions(batch_size=8, val_settings=2, eval_batch_size=8)


def _ids(v):
    dense, parallel, ee = v
    return ("D" if dense else "") + ("P" if parallel else "") + ("" if dense or parallel else "B") + ("-EE" if ee else "-SE")


@pytest.fixture(scope="module")
def splits():
    return load_splits("synthetic", resolution=16, seed=0, calibration_size=8, n_classes=4, size=16, n_train=16,
                       n_val=8, n_test=8)


def _supernet(variant=(False, False, False), resolutions=(16,), seed=0):
    dense, parallel, ee = variant
    torch.manual_seed(seed)
    return Supernet(4, 1.0, dense=dense, parallel=parallel, early_exits=ee,
                    space=default_space(parallel, ee, 1.0, resolutions))


def _table(epochs=1, warmup=0):
    """The default EPS table with every phase shortened to `epochs` (+ `warmup`)."""
    table = copy.deepcopy(list(EPS_PHASES))
    for row in table:
        row["epochs"] = epochs
        row["warmup_epochs"] = warmup
    return table


def _phases(net, table):
    return parse_phases(table, net.space, parallel=net.parallel, early_exits=net.early_exits)


# -- AEP and ENS-KD ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_aep_weights_match_the_paper_formulas(n):
    asc = [i / (n * (n + 1) / 2) for i in range(1, n + 1)]
    assert aep_weights("unif", n) == ([1 / n] * n, [1 / n] * n)
    assert aep_weights("asc", n) == (asc, asc)
    assert aep_weights("desc", n) == (asc[::-1], asc[::-1])
    assert aep_weights("mix", n) == (asc[::-1], asc)
    for scheme in ("unif", "asc", "desc", "mix"):
        alpha, beta = aep_weights(scheme, n)
        assert sum(alpha) == pytest.approx(1) and sum(beta) == pytest.approx(1)


def test_aep_weights_for_five_exits_and_bad_input():
    assert aep_weights("asc", 5)[0] == pytest.approx([1 / 15, 2 / 15, 3 / 15, 4 / 15, 5 / 15])
    with pytest.raises(ValueError, match="unknown AEP weight scheme 'up'"):
        aep_weights("up", 3)
    with pytest.raises(ValueError, match="positive integer"):
        aep_weights("unif", 0)


def test_aep_loss_and_ensemble_by_hand():
    z = [torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.5]])]
    y = torch.tensor([1])
    alpha = [0.25, 0.75]

    def ce(logits, t):
        return -(logits[t] - np.log(np.exp(logits).sum()))
    expected = 0.25 * ce(np.array([2.0, 0.0, -1.0]), 1) + 0.75 * ce(np.array([0.0, 1.0, 0.5]), 1)
    assert aep_loss(z, y, alpha).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(ensemble_logits(z, [0.4, 0.6]), torch.tensor([[0.8, 0.6, -0.1]]))
    with pytest.raises(ValueError, match="2 exits but 3 alpha"):
        aep_loss(z, y, [0.2, 0.3, 0.5])


class _ThreeExits(torch.nn.Module):
    exit_list = (1, 2, 3)

    def forward(self, x):
        return x[:, 0], x[:, 1], x[:, 2]


def test_ens_kd_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)   # 4 images, 3 teacher exits, 5 classes
    student = torch.randn(4, 5, generator=g, dtype=torch.float64)
    beta = [0.5, 0.3, 0.2]
    z_t = teacher_logits(_ThreeExits(), x, beta)
    xs, s = x.numpy(), student.numpy()
    for temperature in (1.0, 2.0):
        total = 0.0
        for i in range(4):
            zt = sum(b * xs[i, j] for j, b in enumerate(beta)) / temperature
            p = np.exp(zt - zt.max()) / np.exp(zt - zt.max()).sum()
            zs = s[i] / temperature
            log_q = zs - zs.max() - np.log(np.exp(zs - zs.max()).sum())
            total += -(p * log_q).sum()
        expected = total / 4 * temperature ** 2
        assert kd_loss(student, z_t, temperature).item() == pytest.approx(expected, rel=1e-6)


def test_freeze_turns_off_gradients_and_keeps_bn_statistics():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    before = net[1].running_mean.clone()
    freeze(net, "train")
    net(torch.randn(2, 3, 4, 4) + 5)
    assert not any(p.requires_grad for p in net.parameters())
    assert net[1].training and torch.equal(net[1].running_mean, before)
    freeze(net, "eval")
    assert not net[1].training
    with pytest.raises(ValueError, match="teacher BN mode 'test'"):
        freeze(net, "test")


# -- phase tables --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_default_eps_table_follows_the_ofav2_paper(variant):
    net = _supernet(variant)
    phases = _phases(net, EPS_PHASES)
    names = [p.name for p in phases]
    expected = (["full", "kernel"] + (["level1", "level2"] if variant[1] else [])
                + (["exit1", "exit2", "exit3", "exit4"] if variant[2] else [])
                + ["depth1", "depth2", "expand1", "expand2"])
    assert names == expected
    by_name = {p.name: p for p in phases}
    assert by_name["full"].space.kernels == (7,) and by_name["full"].space.depths == (4,)
    assert by_name["full"].dropout == 0.2 and by_name["full"].aep
    assert by_name["depth1"].space.kernels == (3, 5, 7) and by_name["depth1"].space.depths == (3, 4)
    assert by_name["expand1"].space.expands == (4, 6) and by_name["expand1"].sort_channels
    assert by_name["expand1"].expand_stage == 0 and by_name["expand2"].expand_stage == 1
    assert by_name["expand2"].space.exits == ((1, 2, 3, 4, 5) if variant[2] else (5,))
    assert by_name["expand2"].subnets_per_step == 4 and by_name["kernel"].total_epochs == 125
    if variant[1]:
        assert by_name["level1"].space.keys == (3, 5, 6, 7)


@pytest.mark.parametrize("row, message", [
    ({"name": "kernel", "epochs": 1, "lr": 0.1, "kernel": [3]}, "unknown keys \\['kernel'\\]"),
    ({"name": "kernel", "epochs": 1, "lr": 0.1, "kernels": [3, 9]}, "has \\[9\\], which the supernet does not have"),
    ({"name": "kernel", "lr": 0.1}, "epochs is missing"),
    ({"name": "kernel", "epochs": 0, "lr": 0.1}, "epochs = 0; expected >= 1"),
    ({"name": "kernel", "epochs": 1, "lr": -1}, "lr = -1; expected > 0"),
    ({"name": "kernel", "epochs": 1.5, "lr": 0.1}, "expected an integer"),
    ({"name": "a/b", "epochs": 1, "lr": 0.1}, "expected a word"),
    ({"name": "k", "epochs": 1, "lr": 0.1, "only": "dense"}, "only = 'dense'"),
    ({"name": "k", "epochs": 1, "lr": 0.1, "aep": "yes"}, "aep = 'yes'; expected true or false"),
])
def test_bad_phase_rows_are_named(row, message):
    with pytest.raises(PhaseError, match=message):
        parse_phases([row], default_space(False, False, 1.0), parallel=False, early_exits=False)


def test_duplicate_phase_names_and_empty_tables_are_errors():
    space = default_space(False, False, 1.0)
    with pytest.raises(PhaseError, match="used twice"):
        parse_phases([{"name": "a", "epochs": 1, "lr": 1}] * 2, space, parallel=False, early_exits=False)
    with pytest.raises(PhaseError, match="non-empty list"):
        parse_phases([], space, parallel=False, early_exits=False)


def test_validation_grid_covers_min_and_max_and_is_capped():
    space = default_space(True, True, 1.0, (16, 24))
    full = validation_grid(space, cap=1000)
    assert len(full) == 2 ** 6
    assert full[0] == space.min_arch() and full[-1] == space.max_arch()
    capped = validation_grid(space, cap=5)
    assert len(capped) == 5 and capped[0] == full[0] and capped[-1] == full[-1]
    assert len(set(capped)) == 5
    single = default_space(False, False, 1.0)
    assert validation_grid(single.__class__(**{**single.__dict__, "kernels": (7,), "expands": (6,),
                                                "depths": (4,)})) == [single.max_arch()]


# -- data order and resolution -------------------------------------------------------------------
def test_batches_draw_one_resolution_each_and_ranks_agree():
    samplers = [ResolutionBatchSampler(64, 4, (16, 20, 24), seed=3, ctx=Dist(rank, 2)) for rank in (0, 1)]
    for s in samplers:
        s.set_epoch(1)
    batches = [list(s) for s in samplers]
    assert len(batches[0]) == len(batches[1]) == 8
    for b0, b1 in zip(*batches):
        assert len({r for _, r, _ in b0}) == 1 and b0[0][1] == b1[0][1]
    seen = [i for b in batches[0] + batches[1] for i, _, _ in b]
    assert sorted(seen) == list(range(64))
    assert len({b[0][1] for b in batches[0]}) > 1
    seeds = [[s for b in batches[rank] for _, _, s in b] for rank in (0, 1)]
    assert len(set(seeds[0]) | set(seeds[1])) == 64   # every image of the epoch its own augmentation draw
    samplers[0].set_epoch(2)
    assert list(samplers[0]) != batches[0]


def test_augmentation_depends_on_the_item_seed_only(splits):
    item = (3, 16, 12345)
    first = splits.train[item][0]
    torch.rand(10)   # the process's generator moves on; the item's draw must not
    assert torch.equal(splits.train[item][0], first)
    variants = {tuple(splits.train[(3, 16, seed)][0].flatten().tolist()) for seed in range(16)}
    assert len(variants) == 2   # flipped or not: the synthetic set's one random transform
    state = torch.get_rng_state()
    splits.train[item]
    assert torch.equal(torch.get_rng_state(), state)   # dropout's stream is left alone


def test_training_steps_see_varying_resolutions(splits, tmp_path, monkeypatch):
    seen = []
    original = PhaseTrainer.train_step

    def spy(self, x, y, archs):
        seen.append((x.shape[-1], {a.resolution for a in archs}))
        return original(self, x, y, archs)
    monkeypatch.setattr(PhaseTrainer, "train_step", spy)
    net = _supernet(resolutions=(12, 16, 20))
    table = [{"name": "kernel", "kernels": "all", "epochs": 4, "lr": 0.01}]
    train_supernet(net, _phases(net, table), splits, tmp_path, OPTIONS)
    assert len({r for r, _ in seen}) > 1
    assert all(archs == {r} for r, archs in seen)


# -- every phase of every variant ----------------------------------------------------------------
def _fixed_batch_loss(net, splits):
    """The full phase's objective on the whole (fixed) training set: CE of the max network, or
    the AEP loss over all its exits for early-exit supernets."""
    x = torch.stack([splits.train[(i, 16)][0] for i in range(len(splits.train))])
    y = torch.tensor([splits.train[i][1] for i in range(len(splits.train))])
    net.set_active(net.space.max_arch(), "all" if net.early_exits else None)
    net.train()
    with torch.no_grad():
        out = net(x)
    return aep_loss(out, y, aep_weights("desc", len(net.active_exits))[0]).item()


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_every_phase_runs_and_the_loss_decreases(variant, splits, tmp_path):
    """All phases of the default table (1 step per epoch: 16 images, batch 16), the full phase
    for 5 epochs: the loss on the training batch goes down."""
    net = _supernet(variant)
    net.set_dropout(0.0)
    before = _fixed_batch_loss(net, splits)
    table = _table(epochs=1)
    table[0]["epochs"] = 5
    phases = _phases(net, table)
    options = TrainOptions(batch_size=16, reference_batch=16, val_settings=2, eval_batch_size=8,
                           label_smoothing=0.0)
    best = train_supernet(net, phases, splits, tmp_path, options)
    for phase in phases:
        for name in ("last.pt", "best.pt", "metrics.csv"):
            assert (tmp_path / phase.name / name).is_file()
        assert load_checkpoint(tmp_path / phase.name / "last.pt")["epoch"] == phase.total_epochs
    assert best == tmp_path / phases[-1].name / "best.pt"
    net.set_dropout(0.0)
    assert _fixed_batch_loss(net, splits) < before


def _trainer(net, splits, tmp_path, row, options=OPTIONS, teacher=None):
    phase = _phases(net, [row])[0]
    return PhaseTrainer(net, phase, 0, splits, options, tmp_path, Dist(), teacher, None, 0.0)


def _batch(splits, n=8, resolution=16):
    x = torch.stack([splits.train[(i, resolution)][0] for i in range(n)])
    return x, torch.tensor([splits.train[i][1] for i in range(n)])


def test_bf16_runs_the_forward_in_bf16_and_the_loss_in_fp32(splits, tmp_path, monkeypatch):
    net = _supernet((False, False, True))
    teacher = train_module.build_teacher(net, splits, OPTIONS, torch.device("cpu"))
    trainer = _trainer(net, splits, tmp_path, {"name": "exit", "exits": "all", "epochs": 1, "lr": 0.05,
                                               "subnets_per_step": 2}, replace(OPTIONS, bf16=True), teacher)
    seen = []
    original = PhaseTrainer._loss

    def spy(self, out, y, z_t, alpha):
        loss = original(self, out, y, z_t, alpha)
        with torch.no_grad():   # the same loss on the same logits, cast to fp32 first
            z = as_exits(out)[0].float()
            reference = torch.nn.functional.cross_entropy(z, y, label_smoothing=self.options.label_smoothing) \
                + self.options.kd_ratio * kd_loss(z, z_t)
        seen.append((as_exits(out)[0].dtype, z_t.dtype, loss.dtype, loss.item() - reference.item()))
        return loss
    monkeypatch.setattr(PhaseTrainer, "_loss", spy)
    before = net.stem.conv.weight.clone()
    x, y = _batch(splits)
    loss = trainer.train_step(x, y, trainer.step_archs(0, 16))
    assert [s[:3] for s in seen] == [(torch.bfloat16, torch.float32, torch.float32)] * 2
    assert all(abs(s[3]) <= 1e-6 for s in seen)   # in bf16 it would be off by ~1e-3
    assert math.isfinite(loss) and not torch.equal(net.stem.conv.weight, before)
    assert net.stem.conv.weight.dtype == torch.float32


def test_bf16_phase_trains_end_to_end(splits, tmp_path):
    net = _supernet((True, True, True), resolutions=(12, 16))
    table = [{"name": "full", "epochs": 1, "lr": 0.05, "aep": True},
             {"name": "depth", "depths": "all", "exits": "all", "epochs": 1, "lr": 0.01, "subnets_per_step": 2}]
    train_supernet(net, _phases(net, table), splits, tmp_path, replace(OPTIONS, bf16=True))
    history = load_checkpoint(tmp_path / "depth" / "last.pt")["history"]
    assert math.isfinite(history[0]["train_loss"]) and history[0]["val_top1"] >= 0


def test_train_step_loss_holds_the_ens_kd_term_of_the_teacher(splits, tmp_path):
    """loss = CE(z_S, y) + kd_ratio H(softmax(z_T), z_S), z_T the teacher's DESC-weighted exits."""
    net = _supernet((False, False, True))
    teacher = train_module.build_teacher(net, splits, OPTIONS, torch.device("cpu"))
    options = replace(OPTIONS, kd_ratio=0.7, label_smoothing=0.0)
    trainer = _trainer(net, splits, tmp_path, {"name": "exit", "exits": "all", "epochs": 1, "lr": 0.05},
                       options, teacher)
    x, y = _batch(splits)
    arch = trainer.step_archs(0, 16)
    net.set_active(arch[0])
    net.set_dropout(0.0)
    net.train()
    with torch.no_grad():
        z_s = net(x)
        z_t = sum(b * z for b, z in zip(aep_weights("desc", 5)[1], teacher(x)))
        expected = (torch.nn.functional.cross_entropy(z_s, y) + 0.7 * kd_loss(z_s, z_t)).item()
    assert trainer.train_step(x, y, arch) == pytest.approx(expected, rel=1e-5)


def test_lr_follows_the_warm_up_and_cosine_schedule(splits, tmp_path, monkeypatch):
    """Linear warm-up from lr / W to the peak over W steps, then cosine to 0 over the phase's
    T steps; the phase lr is for `reference_batch` and scales with the batch."""
    seen = []
    original = PhaseTrainer.train_step

    def spy(self, x, y, archs):
        seen.append(self.optimizer.param_groups[0]["lr"])
        return original(self, x, y, archs)
    monkeypatch.setattr(PhaseTrainer, "train_step", spy)
    net = _supernet()
    options = replace(OPTIONS, batch_size=4, reference_batch=8, val_every=100)
    train_supernet(net, _phases(net, [{"name": "kernel", "kernels": "all", "epochs": 3, "warmup_epochs": 1,
                                       "lr": 0.2}]), splits, tmp_path, options)
    peak, w, t = 0.2 * 4 / 8, 4, 12   # 16 images / batch 4 = 4 steps per epoch
    assert len(seen) == w + t
    assert seen[:w] == pytest.approx([peak / w + i * (peak - peak / w) / w for i in range(w)])
    assert seen[w] == pytest.approx(peak)
    assert seen[w:] == pytest.approx([peak / 2 * (1 + math.cos(math.pi * i / t)) for i in range(t)])
    assert seen[-1] < 0.02 * peak


def test_every_eps_phase_lowers_its_own_loss(splits, tmp_path, monkeypatch):
    """Each phase's training objective (CE + ENS-KD from its teacher, AEP over all exits in AEP
    phases), averaged over its validation grid's subnets on a fixed batch, is lower after the
    phase than before it: every phase of a DP-EE supernet, not only the full one, learns."""
    x = torch.stack([splits.train[(i, 16)][0] for i in range(len(splits.train))])
    y = torch.tensor([splits.train[i][1] for i in range(len(splits.train))])

    def objective(trainer):
        net, phase = trainer.supernet, trainer.phase
        net.set_dropout(0.0)
        net.train()
        z_t = None if trainer.teacher is None else teacher_logits(trainer.teacher, x, aep_weights("desc", 5)[1])
        losses = []
        with torch.no_grad():
            for arch in validation_grid(phase.space, 8):
                net.set_active(arch, "all" if phase.aep else None)
                losses.append(trainer._loss(net(x), y, z_t, aep_weights("desc", len(net.active_exits))[0]).item())
        return sum(losses) / len(losses)

    change = {}
    original = PhaseTrainer.run

    def measured(self, until=None):
        before = objective(self)
        result = original(self, until)
        change[self.phase.name] = (before, objective(self))
        return result
    monkeypatch.setattr(PhaseTrainer, "run", measured)
    net = _supernet((True, True, True))
    table = _table(epochs=2)
    for row in table:
        row.update(dropout=0.0, lr=0.03)
    phases = _phases(net, table)
    options = TrainOptions(batch_size=16, reference_batch=16, val_settings=2, eval_batch_size=8,
                           label_smoothing=0.0)
    train_supernet(net, phases, splits, tmp_path, options)
    assert list(change) == [p.name for p in phases]
    assert all(after < before for before, after in change.values()), change


# -- resume --------------------------------------------------------------------------------------
class _Kill(Exception):
    pass


@pytest.mark.parametrize("kill_after, workers", [(1, 0), (7, 0), (7, 2)])
def test_resume_after_a_kill_equals_an_uninterrupted_run(kill_after, workers, splits, tmp_path, monkeypatch):
    """Killed in the full phase's first epoch (1) or the kernel phase's second (7), the latter also
    after its loader workers started (`workers` 2): the resumed weights are the same."""
    table = [{"name": "full", "epochs": 2, "lr": 0.05, "aep": True},
             {"name": "kernel", "kernels": "all", "epochs": 2, "warmup_epochs": 1, "lr": 0.03},
             {"name": "depth", "depths": "all", "epochs": 1, "lr": 0.01, "subnets_per_step": 2}]
    variant = (True, False, True)
    options = replace(OPTIONS, num_workers=workers)
    reference = _supernet(variant, resolutions=(12, 16))
    train_supernet(reference, _phases(reference, table), splits, tmp_path / "a", options)

    steps = []
    original = PhaseTrainer.train_step

    def dying(self, x, y, archs):
        if len(steps) == kill_after:
            raise _Kill
        steps.append(1)
        return original(self, x, y, archs)
    monkeypatch.setattr(PhaseTrainer, "train_step", dying)
    killed = _supernet(variant, resolutions=(12, 16))
    with pytest.raises(_Kill):
        train_supernet(killed, _phases(killed, table), splits, tmp_path / "b", options)
    monkeypatch.setattr(PhaseTrainer, "train_step", original)
    resumed = _supernet(variant, resolutions=(12, 16))
    train_supernet(resumed, _phases(resumed, table), splits, tmp_path / "b", options)

    a, b = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for phase in ("full", "kernel", "depth"):
        ha = load_checkpoint(tmp_path / "a" / phase / "last.pt")["history"]
        hb = load_checkpoint(tmp_path / "b" / phase / "last.pt")["history"]
        assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]


# -- teachers ------------------------------------------------------------------------------------
def test_teacher_is_the_frozen_max_network_of_the_previous_best_checkpoint(splits, tmp_path, monkeypatch):
    teachers = []
    original = train_module.build_teacher

    def capture(*args, **kwargs):
        teachers.append(original(*args, **kwargs))
        teachers.append({k: v.clone() for k, v in teachers[-1].state_dict().items()})
        return teachers[-2]
    monkeypatch.setattr(train_module, "build_teacher", capture)
    net = _supernet((False, True, True))
    table = [{"name": "full", "epochs": 2, "lr": 0.05, "aep": True},
             {"name": "kernel", "kernels": "all", "epochs": 1, "lr": 0.03}]
    train_supernet(net, _phases(net, table), splits, tmp_path, OPTIONS)
    teacher, state_at_start = teachers
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, state_at_start[k]) for k, v in teacher.state_dict().items())
    assert teacher.exit_list == (1, 2, 3, 4, 5)

    previous = _supernet((False, True, True), seed=5)
    previous.load_state_dict(load_checkpoint(tmp_path / "full" / "best.pt")["model"])
    previous.set_active(previous.space.max_arch(), "all")
    x = torch.stack([splits.calibration[(i, 16)][0] for i in range(len(splits.calibration))])
    recalibrate_bn(previous, [(x, None)])
    previous.eval()
    with torch.no_grad():
        for a, b in zip(teacher(x), previous(x)):
            assert torch.allclose(a, b, atol=1e-5)


def test_teacher_at_each_resolution_is_the_max_network_recalibrated_at_that_resolution(splits):
    resolutions = (12, 16, 20)
    net = _supernet((True, True, True), resolutions=resolutions)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)   # away from the initial weights, so statistics matter
    teacher = train_module.build_teacher(net, splits, OPTIONS, torch.device("cpu"))
    for r in (20, 12, 16, 20):   # out of order: the statistics follow the input, not the last call
        reference = net.extract(net.space.max_arch(), "all")
        x = torch.stack([splits.calibration[(i, r)][0] for i in range(len(splits.calibration))])
        recalibrate_bn(reference, [(x, None)])
        reference.eval()
        with torch.no_grad():
            for a, b in zip(teacher(x), reference(x)):
                assert torch.allclose(a, b, atol=1e-5), r
    with pytest.raises(ValueError, match="calibrated at \\[12, 16, 20\\] px, not at 24 px"):
        teacher(torch.zeros(1, 3, 24, 24))


# -- channel sorting -----------------------------------------------------------------------------
def test_channel_sorting_keeps_the_max_network_and_moves_weights():
    net = _supernet((True, True, False))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    before_out = net(x)
    weight = net.stages[1][0].mbconv.point_linear.conv.conv.weight.clone()
    net.sort_channels(0)
    assert torch.allclose(net(x), before_out, atol=1e-5)
    after = net.stages[1][0].mbconv.point_linear.conv.conv.weight
    assert not torch.equal(after, weight)
    importance = after.abs().sum((0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
    net.sort_channels(1)
    assert torch.allclose(net(x), before_out, atol=1e-5)


# -- bad input -----------------------------------------------------------------------------------
def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(splits, tmp_path, monkeypatch):
    net = _supernet()
    table = [{"name": "full", "epochs": 3, "lr": 0.05}]
    train_supernet(net, _phases(net, [{**table[0], "epochs": 1}]), splits, tmp_path / "ok", OPTIONS)
    calls = []
    original = PhaseTrainer._loss

    def poisoned(self, *args):
        calls.append(1)
        loss = original(self, *args)
        return loss * float("nan") if len(calls) > 2 else loss
    monkeypatch.setattr(PhaseTrainer, "_loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite gradient.*last good checkpoint .*last.pt"):
        train_supernet(_supernet(), _phases(net, table), splits, tmp_path / "run", OPTIONS)
    last = tmp_path / "run" / "full" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1
    digest = _sha(last)
    with pytest.raises(TrainingError):
        train_supernet(_supernet(), _phases(net, table), splits, tmp_path / "run", OPTIONS)
    assert _sha(last) == digest


def test_corrupt_and_foreign_checkpoints_are_clear_errors(splits, tmp_path):
    net = _supernet()
    table = [{"name": "full", "epochs": 1, "lr": 0.05}]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="last.pt cannot be read"):
        train_supernet(net, _phases(net, table), splits, tmp_path, OPTIONS)
    other = _supernet((False, False, True))
    atomic_save({"format": "nat2-supernet", "model": other.state_dict(),
                 "supernet": {"n_classes": 4, "width": 1.0, "dense": False, "parallel": False, "early_exits": True}},
                tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="early_exits = True \\(expected False\\)"):
        load_source(net, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_source(net, tmp_path / "missing.pt")
    atomic_save({"a": 1}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="neither a nat2 checkpoint nor an ofa state dict"):
        load_source(net, tmp_path / "junk.pt")


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="teacher_bn = 'off'"):
        TrainOptions(teacher_bn="off")
    with pytest.raises(ValueError, match="batch_size = 0"):
        TrainOptions(batch_size=0)
    with pytest.raises(ValueError, match="aep_scheme = 'x'"):
        TrainOptions(aep_scheme="x")


# -- warm-up sources -----------------------------------------------------------------------------
def test_warm_up_source_keeps_the_body_and_resets_other_class_counts(splits, tmp_path):
    source = Supernet(10, 1.0, early_exits=True, space=default_space(False, True, 1.0, (16,)))
    atomic_save({"format": "nat2-supernet", "model": source.state_dict(),
                 "supernet": {"n_classes": 10, "width": 1.0, "dense": False, "parallel": False, "early_exits": True}},
                tmp_path / "src.pt")
    target = _supernet((False, False, True))
    fresh = target.exits["5"].classifier.weight.clone()
    assert load_source(target, tmp_path / "src.pt") == "nat2-supernet"
    src, tgt = source.state_dict(), target.state_dict()
    for k, v in tgt.items():
        if ".classifier." in k:
            assert v.shape[0] == 4
        else:
            assert torch.equal(v, src[k]), k
    assert torch.equal(target.exits["5"].classifier.weight, fresh)


def test_warm_up_source_in_ofa_format(tmp_path):
    ofa = OFAMobileNetV3(n_classes=1000, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    torch.save({"state_dict": ofa.state_dict()}, tmp_path / "ofa.pth")
    net = _supernet()
    assert load_source(net, tmp_path / "ofa.pth") == "ofa"
    assert torch.equal(net.stem.conv.weight, ofa.first_conv.conv.weight)
    assert net.exits["5"].classifier.out_features == 4


def test_step_subnets_depend_only_on_the_step(splits, tmp_path):
    net = _supernet((False, True, True))
    phase = _phases(net, [{"name": "all", "kernels": "all", "depths": "all", "keys": "all", "exits": "all",
                           "epochs": 1, "lr": 0.1, "subnets_per_step": 3}])[0]
    trainers = [PhaseTrainer(net, phase, 0, splits, OPTIONS, tmp_path, Dist(), None, None, 0.1) for _ in range(2)]
    assert trainers[0].step_archs(5, 16) == trainers[1].step_archs(5, 16)
    assert len(trainers[0].step_archs(5, 16)) == 3
    assert trainers[0].step_archs(5, 16) != trainers[0].step_archs(6, 16)
