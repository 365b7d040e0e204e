"""95% intervals: a seeded percentile bootstrap over traces, paired for differences, in compile's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bae.intervals import Interval, delta_interval, score_interval
from tests.cli import EXAMPLE, LMS, TRAIN, bae

HALF = [1.0] * 11 + [0.0] * 10  # 21 traces, about half right: the example's dev split


def test_the_interval_holds_the_score_and_is_the_same_every_time_in_any_order() -> None:
    interval = score_interval(HALF)
    assert interval.low < 11 / 21 < interval.high
    assert score_interval(HALF) == interval == score_interval(HALF[::-1]) == score_interval(HALF[::2] + HALF[1::2])


def test_21_traces_carry_about_plus_or_minus_0_2() -> None:
    """What the README states about the example's dev split."""
    interval = score_interval(HALF)
    assert 0.17 < (interval.high - interval.low) / 2 < 0.23
    wider = score_interval(HALF * 4)  # four times the traces: half the width
    assert (wider.high - wider.low) == pytest.approx((interval.high - interval.low) / 2, rel=0.2)


def test_traces_without_a_score_are_left_out() -> None:
    assert score_interval([1.0, None, 1.0, None]) == Interval(1.0, 1.0)
    assert score_interval([]) == score_interval([None, None]) == Interval(0.0, 0.0)


def test_a_paired_difference_cancels_what_both_sides_share() -> None:
    """Each side alone spans most of 0..1, but the second is the first plus 0.1 on every trace."""
    first = [i / 20 for i in range(19)] * 2
    second = [s + 0.1 for s in first]
    assert score_interval(first).high - score_interval(first).low > 0.15
    delta = delta_interval(first, second)
    assert delta.low == pytest.approx(0.1) and delta.high == pytest.approx(0.1) and not delta.includes_zero


def test_a_difference_two_traces_make_includes_0() -> None:
    first = [1.0, 0.0] * 10
    second = [*first[:18], 1.0, 1.0]  # one trace better, on 20
    delta = delta_interval(first, second)
    assert delta.includes_zero and delta.high > 0
    assert delta_interval(first, first) == Interval(0.0, 0.0)
    with pytest.raises(ValueError, match="same traces"):
        delta_interval(first, second[:-1])


def test_compile_prints_and_records_each_score_with_its_interval(tmp_path: Path) -> None:
    """Few-shot model: naive routes everything to billing, optimized everything right: a gain beyond noise."""
    lines = TRAIN.read_text().splitlines()
    held = lines[:3] + lines[40:45] + lines[-4:]
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("\n".join(line for line in lines if line not in held) + "\n")
    dev.write_text("\n".join(held) + "\n")
    flags = ("--trainset", str(train), "--devset", str(dev), "--lm", f"{LMS}:fewshot")
    text = bae("compile", EXAMPLE, *flags, "--out", str(tmp_path / "a")).stdout
    scores = json.loads((tmp_path / "a" / "v1" / "manifest.json").read_text())["scores"]
    low, high = scores["naive_interval"]
    assert low < scores["naive"] < high and scores["optimized_interval"] == [1.0, 1.0]
    delta_low, delta_high = scores["delta_interval"]
    assert 0 < delta_low < scores["optimized"] - scores["naive"] < delta_high
    assert f"naive {scores['naive']:.3f} [{low:.3f}, {high:.3f}] -> optimized 1.000 [1.000, 1.000]" in text
    assert (
        f"optimized - naive: {scores['optimized'] - scores['naive']:+.3f}, 95% interval "
        f"[{delta_low:+.3f}, {delta_high:+.3f}]: entirely above 0" in text
    )
    report = json.loads(bae("compile", EXAMPLE, *flags, "--out", str(tmp_path / "b"), "--json").stdout)
    assert report["scores"] == {**scores, "metric": "default_metric"}


def test_compile_says_when_the_difference_could_be_noise(tmp_path: Path) -> None:
    """The oracle answers right with or without demos: optimizing changed nothing on dev."""
    dev = tmp_path / "dev.jsonl"
    dev.write_text("\n".join(TRAIN.read_text().splitlines()[:40:4]) + "\n")
    result = bae("compile", EXAMPLE, "--devset", str(dev), "--out", str(tmp_path / "c"), "--lm", f"{LMS}:oracle")
    assert "optimized - naive: +0.000, 95% interval [+0.000, +0.000]: includes 0: these traces cannot tell the two " \
        "apart" in result.stdout  # fmt: skip
