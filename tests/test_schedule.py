"""The training schedule is relative to the run: short and long runs both reach their full loss weights,
and the EMA teacher (the exported labeler) forgets the random start it began as."""
from dataclasses import fields, replace

import pytest
import torch

from mal.cli import build_parser
from mal.config import RECIPES, Schedule, TrainConfig, recipe, with_overrides
from mal.train import ema_update


def teacher_start_share(momentum: float, steps: int) -> float:
    """Run the EMA for real: a teacher that starts at 0 following a student at 1; its distance to 1 is
    the share of its start it still holds."""
    teacher, student = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        teacher.weight.zero_()
        student.weight.fill_(1.0)
    for _ in range(steps):
        ema_update(teacher, student, momentum)
    return 1.0 - float(teacher.weight.detach())


@pytest.mark.parametrize("decoder", sorted(RECIPES))
@pytest.mark.parametrize("steps", [300, 30_000])
def test_short_and_long_runs_reach_full_weights_and_forget_the_start(decoder, steps):
    s = Schedule.of(replace(recipe(decoder).train, total_steps=steps))
    last = steps - 1
    assert s.mil_factor(last) == 1.0 and s.crf_factor(last) == 1.0
    assert s.warmup < steps // 2 and s.lr_factor(s.warmup, 0.2) == pytest.approx(1.0)
    assert s.lr_factor(last, 0.2) == pytest.approx(0.2, abs=1e-3)  # the cosine has run its course
    assert teacher_start_share(s.ema_momentum, steps) < 0.01


def test_schedule_scales_with_the_run():
    c = TrainConfig()  # the K.V recipe: ramps and warm-up needed
    short, long = (Schedule.of(replace(c, total_steps=n)) for n in (300, 30_000))
    assert (short.warmup, short.mil_ramp, short.crf_ramp) == (24, 45, 150)
    assert (long.warmup, long.mil_ramp, long.crf_ramp) == (2400, 4500, 15000)
    assert short.mil_factor(0) < 0.05 and short.crf_factor(short.crf_ramp // 2) == pytest.approx(0.5, abs=0.01)
    # the teacher's memory is capped by the run on short runs, by ema_momentum on long ones
    assert short.ema_momentum == pytest.approx(1 - 1 / 60) and long.ema_momentum == c.ema_momentum
    sam = Schedule.of(replace(recipe("sam").train, total_steps=300))
    assert sam.mil_factor(0) == sam.crf_factor(0) == 1.0  # a pretrained decoder needs no ramp


def test_every_train_setting_is_a_cli_flag_defaulting_to_the_recipe():
    args = build_parser().parse_args(["train", "--images", "i", "--annotations", "a.json", "--out", "o"])
    flags = {f.name for f in fields(TrainConfig)} - {"total_steps"}
    assert all(getattr(args, n) is None for n in flags)  # unset: the decoder's recipe decides
    args = build_parser().parse_args(["train", "--images", "i", "--annotations", "a.json", "--out", "o",
                                      "--mil-ramp", "0.3", "--crf-clamp", "0.2", "0.8", "--crf-iters", "5"])
    r = with_overrides(recipe("kv"), mil_ramp=args.mil_ramp, crf_clamp=tuple(args.crf_clamp),
                       crf_iters=args.crf_iters, lr=args.lr)
    assert (r.train.mil_ramp, r.train.crf_clamp, r.train.crf_iters, r.train.lr) == (0.3, (0.2, 0.8), 5, 1e-4)
    with pytest.raises(ValueError, match="unknown setting"):
        with_overrides(recipe("kv"), mil_ramp_steps=10)
