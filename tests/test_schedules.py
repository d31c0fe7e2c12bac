"""LR schedules: values at the key steps, computed by hand."""

import pytest
import torch

from mm_lightning.schedules import (
    LRSchedule,
    build_lr_scheduler,
    check_table,
    fit_table_to_stage,
    fit_to_stage,
    lr_at,
    lr_at_table,
    rewarmup_piece,
    shortened_warmup,
    stage_end_mismatch,
)


def wsd(**kw):
    fields = dict(kind="wsd", peak_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=100, decay_steps=20)
    return LRSchedule(**{**fields, **kw})


def test_wsd_key_steps():
    s = wsd()
    assert lr_at(s, 0) == 0.0
    assert lr_at(s, 5) == pytest.approx(0.5)
    assert lr_at(s, 10) == 1.0
    assert lr_at(s, 79) == 1.0  # still stable
    assert lr_at(s, 80) == 1.0  # decay starts
    assert lr_at(s, 90) == pytest.approx(0.55)  # halfway, linear: 0.1 + 0.9 * 0.5
    assert lr_at(s, 100) == pytest.approx(0.1)
    assert lr_at(s, 5000) == pytest.approx(0.1)  # floor after the end


def test_wsd_default_decay_is_last_fifth_and_cosine_shape():
    s = wsd(decay_steps=None, decay_shape="cosine")
    assert s.wsd_decay_steps == 20
    assert lr_at(s, 90) == pytest.approx(0.55)  # cosine midpoint equals linear midpoint
    assert lr_at(s, 85) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + 0.7071067811865476))


def test_cosine_key_steps():
    s = LRSchedule(kind="cosine", peak_lr=2.0, min_lr=0.0, warmup_steps=0, total_steps=100)
    assert lr_at(s, 0) == 2.0
    assert lr_at(s, 50) == pytest.approx(1.0)
    assert lr_at(s, 100) == pytest.approx(0.0, abs=1e-12)


def test_start_step_and_start_lr_shift_the_piece():
    s = wsd(start_step=1000, start_lr=0.4)
    assert lr_at(s, 1000) == pytest.approx(0.4)
    assert lr_at(s, 1005) == pytest.approx(0.7)
    assert lr_at(s, 1050) == 1.0


def test_bad_schedules_fail():
    with pytest.raises(ValueError, match="warmup_steps"):
        wsd(warmup_steps=200)
    with pytest.raises(ValueError, match="exceed"):
        wsd(warmup_steps=90, decay_steps=20)


def test_torch_scheduler_follows_the_global_step():
    s = wsd(peak_lr=0.5, min_lr=0.05)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=s.peak_lr)
    sched = build_lr_scheduler(opt, s, step_offset=85)  # a stage resuming at global step 85
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, 85 + i) for i in range(5)])


def test_table_picks_the_piece_in_force_and_rewarmup_climbs_from_the_current_lr():
    stage1 = wsd(total_steps=200, decay_steps=40)  # still stable (LR 1.0) at step 150
    piece = rewarmup_piece([stage1], start_step=150, peak_lr=2.0, min_lr=0.05, warmup_steps=10, total_steps=50)
    table = [stage1, piece]
    assert lr_at_table(table, 149) == 1.0
    assert lr_at_table(table, 150) == pytest.approx(1.0)  # no jump: the climb starts where the LR was
    assert lr_at_table(table, 155) == pytest.approx(1.5)
    assert lr_at_table(table, 160) == pytest.approx(2.0)  # the new, higher peak
    assert lr_at_table(table, 200) == pytest.approx(0.05)  # the floor at the end of the stage
    linear = rewarmup_piece([stage1], 150, 2.0, 0.05, 10, 50, decay_shape="linear")
    assert lr_at(linear, 180) == pytest.approx(0.05 + 1.95 * 0.5)
    with pytest.raises(ValueError, match="increasing order"):
        check_table([piece, stage1])


def test_torch_scheduler_follows_a_table():
    table = [wsd(total_steps=200, decay_steps=40), wsd(peak_lr=3.0, start_step=50, start_lr=1.0, total_steps=100)]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=table[0].peak_lr)
    sched = build_lr_scheduler(opt, table, step_offset=45)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at_table(table, 45 + i) for i in range(10)])


def test_a_piece_without_total_steps_ends_with_its_stage():
    own = LRSchedule(peak_lr=1.0, min_lr=0.1, warmup_steps=2)  # no total_steps: the stage's max_steps decides
    fitted = fit_to_stage(own, stage_start=0, stage_steps=20)
    assert (fitted.total_steps, fitted.wsd_decay_steps) == (20, 4)  # the decay: the last 20%
    assert lr_at(fitted, 20) == pytest.approx(0.1) and lr_at(fitted, 15) == 1.0
    later = fit_to_stage(LRSchedule(warmup_steps=2, start_step=100), stage_start=100, stage_steps=20)
    assert later.total_steps == 20  # a piece starting with a later stage ends with that stage too
    long_warmup = LRSchedule(warmup_steps=30)  # a warmup that leaves no room for the decay: the first 10%
    short = fit_to_stage(long_warmup, 0, 20)
    assert (short.warmup_steps, short.wsd_decay_steps) == (2, 4)
    assert shortened_warmup(long_warmup, short) == (
        "schedule.warmup_steps=30 does not fit in the stage's 20 steps (trainer.max_steps) with its decay: "
        "warming up over 2 steps"
    )
    assert shortened_warmup(own, fitted) is None
    explicit = wsd(total_steps=500, decay_steps=100)
    assert fit_table_to_stage([explicit, own], 0, 20) == [explicit, fitted]  # a length set by hand wins


def test_a_schedule_that_cannot_follow_max_steps_fails_in_one_line():
    with pytest.raises(ValueError, match="trainer.max_steps is not set"):
        fit_to_stage(LRSchedule(), 0, -1)
    with pytest.raises(ValueError, match=r"exceed total_steps \(20\) \(total_steps follows trainer.max_steps=20\)"):
        fit_to_stage(LRSchedule(warmup_steps=3, decay_steps=30), 0, 20)  # a decay set by hand is kept
    with pytest.raises(ValueError, match="no total_steps yet"):
        lr_at(LRSchedule(), 500)


def test_a_length_set_by_hand_that_misses_the_stage_end_is_named():
    assert stage_end_mismatch(wsd(total_steps=20, decay_steps=4), 0, 20) is None
    assert stage_end_mismatch(LRSchedule(), 0, 20) is None  # nothing set: it will follow max_steps
    assert stage_end_mismatch(wsd(total_steps=20, decay_steps=4), 0, -1) is None  # no max_steps to compare with
    line = stage_end_mismatch(wsd(total_steps=100), 0, 20)
    assert "total_steps=100" in line and "after this stage's end at 20" in line and "\n" not in line
    assert "before this stage's end at 30" in stage_end_mismatch(wsd(total_steps=20, decay_steps=4), 10, 20)
