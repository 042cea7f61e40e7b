"""The outer learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import pytest

from metaspeech.errors import ConfigError
from metaspeech.training.schedule import check_decay, lr_factor


def test_warmup_then_constant() -> None:
    assert [lr_factor(s, 4, "constant", 100, 0.1) for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_cosine_falls_from_one_to_the_floor_at_the_last_step_and_stays() -> None:
    rates = [lr_factor(s, 2, "cosine", 10, 0.1) for s in range(2, 13)]
    assert rates[0] == pytest.approx(1.0) and rates[8] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.1)
    assert rates[4] == pytest.approx(0.55)  # half way: the mean of peak and floor
    assert rates == sorted(rates, reverse=True)


def test_wsd_holds_the_peak_then_falls_linearly_over_the_last_fifth_to_the_floor() -> None:
    rates = [lr_factor(s, 10, "wsd", 110, 0.1) for s in range(10, 115)]  # 100 steps after the warmup
    assert rates[:81] == [1.0] * 81  # steps 10..90: the stable phase
    assert rates[90] == pytest.approx(0.55)  # half way through the decay (step 100)
    assert rates[100] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.1)
    assert rates == sorted(rates, reverse=True)


@pytest.mark.parametrize("total", [None, -1, 2])
def test_cosine_without_a_known_end_after_the_warmup_stays_constant(total) -> None:
    assert lr_factor(5, 2, "cosine", total, 0.1) == 1.0


def test_an_unknown_decay_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="model.lr_decay"):
        check_decay("linear")
