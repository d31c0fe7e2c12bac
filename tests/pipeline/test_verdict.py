"""Capability verdicts: each check against its chance, baseline and start; passkey judged where the context grows."""

import pytest

from mm_lightning.pipeline.verdict import (
    extends_context,
    format_checks,
    format_verdict_totals,
    pipeline_checks,
    stage_checks,
    stage_passes,
)

PROBE_BASELINES = {"val/probe_chance_r@1": 0.02, "val/probe_colour_only_r@1": 0.05, "val/probe_chance_r@5": 0.1}


def entry(name: str, start: dict | None = None, final: dict | None = None, **fields) -> dict:
    """A finished stage's manifest entry with the given validation figures and fields (``seq_len``, ...)."""
    return {"name": name, "status": "finished", "start_metrics": start or {}, "final_metrics": final or {}, **fields}


@pytest.mark.parametrize(
    ("i2t", "reason"),
    [
        (0.03, "at chance: the ViT does not tell the emoji apart"),  # 0.03 < 2 x 0.02
        (0.045, "no better than matching the background colour alone"),
        (0.06, None),
    ],
)
def test_identity_recall_must_beat_twice_chance_and_the_colour_only_baseline(i2t, reason):
    final = PROBE_BASELINES | {"val/probe_i2t_r@1": i2t, "val/probe_t2i_r@1": 0.5, "val/probe_i2t_r@5": 0.3}
    checks = stage_checks(entry("vit", {"val/probe_i2t_r@1": 0.01, "val/probe_t2i_r@1": 0.01}, final))
    by_label = {check.label: check for check in checks}
    assert list(by_label) == ["emoji identity i2t r@1", "emoji identity i2t r@5", "emoji identity t2i r@1"]
    assert by_label["emoji identity i2t r@5"].passed is None  # recall@5 is shown beside, not judged
    assert by_label["emoji identity i2t r@5"].describe() == "info emoji identity i2t r@5 0.3 (chance 0.1)"
    line = by_label["emoji identity i2t r@1"].describe()
    assert line.startswith(f"{'FAIL' if reason else 'PASS'} emoji identity i2t r@1 {i2t:g} (chance 0.02, colour-only")
    assert line.endswith(f": {reason}" if reason else "> start)")
    assert stage_passes(checks) is (reason is None)


def test_identity_recall_must_beat_its_start():
    final = PROBE_BASELINES | {"val/probe_i2t_r@1": 0.5, "val/probe_t2i_r@1": 0.5}
    checks = stage_checks(entry("vit", {"val/probe_i2t_r@1": 0.6}, final))
    assert [check.passed for check in checks] == [False, True]
    assert checks[0].describe().endswith("start 0.6; needs > 2x chance, > colour-only, > start): no better than "
                                         "before the stage trained")  # fmt: skip


def test_a_vlm_stage_that_ignores_its_images_fails_plainly():
    final = {"val/image_use_gap": 0.0004, "val/caption_colour_acc": 0.9, "val/caption_colour_chance": 0.1}
    final |= {"val/caption_emoji_any_acc": 0.7, "val/caption_emoji_any_chance": 0.1, "val/caption_emoji_all_acc": 0.4}
    checks = stage_checks(entry("align", {}, final))
    assert [check.passed for check in checks] == [False, True, True, None]
    assert checks[0].describe() == "FAIL image-use gap 0.0004 nats (needs > 0.05): the model ignores its images"
    assert checks[3].describe() == "info captions naming every emoji 0.4"
    assert stage_passes(checks) is False
    assert format_checks(checks)[0] == "   capability: FAIL (2 of 3 checks pass)"


def test_caption_accuracy_without_its_chance_is_shown_not_judged():
    checks = stage_checks(entry("align", {}, {"val/caption_colour_acc": 0.3}))
    assert [check.passed for check in checks] == [None]
    assert stage_passes(checks) is None
    lines = ["   capability: no judged check", "      info captions naming background colour 0.3"]
    assert format_checks(checks) == lines


@pytest.mark.parametrize(
    ("before", "after", "longer"),
    [
        ({"seq_len": 256, "rope_base": 10000}, {"seq_len": 1024, "rope_base": 10000}, True),
        ({"seq_len": 256, "rope_base": 10000}, {"seq_len": 256, "rope_base": 80000}, True),
        ({"seq_len": 256, "rope_base": 10000}, {"seq_len": 256, "rope_base": 10000}, False),
        ({"seq_len": 1024}, {"seq_len": 256}, False),
        ({}, {"seq_len": 1024}, False),  # no earlier stage with rows: stage 1 lengthens nothing
    ],
)
def test_extends_context_compares_with_the_last_earlier_stage_with_rows(before, after, longer):
    earlier = [entry("text", **before), entry("vit", seq_len=None)]  # the ViT stage has no rows and is skipped
    assert extends_context(entry("long", **after), earlier) is longer


def test_passkey_is_judged_at_the_longest_length_only_where_the_context_grows():
    start = {"val/passkey@256": 0.9, "val/passkey@1024": 0.0}
    final = {"val/passkey@256": 0.95, "val/passkey@1024": 0.0, "val/passkey_chance": 1e-5}
    text = entry("text", start, final, seq_len=256, rope_base=10000)
    cooldown = entry("cooldown", start, final, seq_len=256, rope_base=10000)
    long = entry("long", start, final, seq_len=1024, rope_base=80000)
    text_checks, cooldown_checks, long_checks = pipeline_checks([text, cooldown, long])
    assert stage_passes(text_checks) is None and stage_passes(cooldown_checks) is None  # shown, not judged
    assert [check.label for check in long_checks] == ["passkey@256", "passkey@1024"]  # numeric order
    assert [check.passed for check in long_checks] == [None, False]
    assert long_checks[1].describe() == (
        "FAIL passkey@1024 0 (chance 1e-05, start 0; needs > start): the longer context did not improve retrieval "
        "from it"
    )
    final |= {"val/passkey_first_token@1024": 0.0, "val/passkey_later_tokens@1024": 0.53}  # where it breaks
    long_checks = pipeline_checks([text, cooldown, entry("long", start, final, seq_len=1024, rope_base=80000)])[2]
    assert [check.label for check in long_checks] == ["passkey@256", "passkey@1024"]  # no checks of their own
    assert long_checks[1].references == (("chance", 1e-5), ("start", 0.0), ("first token", 0.0), ("later tokens", 0.53))


def test_totals_count_checked_stages_and_name_the_failing_checks():
    good = entry("vit", {}, PROBE_BASELINES | {"val/probe_i2t_r@1": 0.6, "val/probe_t2i_r@1": 0.7})
    bad = entry("joint", {}, {"val/image_use_gap": 0.01})
    stages = [entry("text", {}, {"val/ppl": 40.0}), good, bad]
    line = format_verdict_totals(stages, pipeline_checks(stages))
    assert line == "Capability checks: 1 of 2 checked stages pass; failing: joint (image-use gap)"
    passing = format_verdict_totals(stages[:2], pipeline_checks(stages[:2]))
    assert passing == "Capability checks: 1 of 1 checked stages pass"


def test_a_pipeline_files_bars_join_the_check_of_their_tag_and_are_reached_not_exceeded():
    final = {"val/image_use_gap": 0.3, "val/caption_emoji_any_acc": 0.59, "val/caption_emoji_any_chance": 0.07}
    bars = {"val/image_use_gap": 0.3, "val/caption_emoji_any_acc": 0.6}
    checks = stage_checks(entry("joint", {"val/image_use_gap": 0.1}, final, bars=bars))
    assert [check.label for check in checks] == ["image-use gap", "captions naming at least one emoji"]
    assert checks[0].passed is True  # 0.3 reaches the file's 0.3
    assert checks[0].describe() == "PASS image-use gap 0.3 nats (start 0.1; needs > 0.05, >= 0.3)"
    assert checks[1].passed is False  # above chance, short of the file's bar
    assert checks[1].describe().endswith("needs > chance, >= 0.6): short of the pipeline file's bar for "
                                         "val/caption_emoji_any_acc")  # fmt: skip
    assert stage_checks(entry("joint", {}, final))[1].passed is True  # without the bar: above chance is enough


def test_a_bar_on_a_figure_no_rule_judges_is_a_check_of_its_own_and_an_unlogged_one_fails():
    final = {"val/passkey@256": 0.95, "val/passkey@1024": 0.5, "val/passkey_chance": 1e-5}
    bars = {"val/passkey@256": 0.9, "val/passkey_typo@1024": 0.8}
    checks = stage_checks(entry("text", {"val/passkey@256": 0.2}, final, bars=bars))  # stage 1: no passkey bar
    by_label = {check.label: check for check in checks}
    assert by_label["passkey@1024"].passed is None and by_label["passkey@256"].passed is True
    missing = by_label["val/passkey_typo@1024"]
    assert missing.passed is False
    assert missing.describe() == (
        "FAIL val/passkey_typo@1024 not logged (needs >= 0.8): the stage logged no val/passkey_typo@1024 "
        "(is the tag spelled as the logs have it?)"
    )
    assert stage_passes(checks) is False
