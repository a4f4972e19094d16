"""The simulation rail is a mode a server is put in, never a default of production."""

from __future__ import annotations

import pytest

from meterline import config
from meterline.cli.common import load_settings
from meterline.config import Settings
from meterline.payments.rails import (
    RailDisabled,
    UnknownRail,
    check_enabled,
    configure_rails,
    get_rail,
    known_rail,
    rail_names,
)


@pytest.mark.parametrize(("dev", "simulation", "enabled"), [
    (True, None, True),     # `make run`: dev mode takes simulated payments
    (False, None, False),   # production: off unless asked for
    (False, True, True),    # a staging server that asks for it
    (True, False, False),   # dev mode that does not want it
])
def test_simulation_is_on_in_dev_mode_or_when_asked_for(dev, simulation, enabled):
    assert Settings(dev=dev, simulation=simulation).simulation_enabled is enabled


def test_a_turned_off_simulation_rail_starts_nothing_but_still_finishes_what_it_started():
    configure_rails(Settings(dev=False))
    with pytest.raises(RailDisabled) as err:
        get_rail("simulation")
    assert err.value.code == "rail_disabled" and err.value.status == 422
    assert "METERLINE_SIMULATION=true" in str(err.value)
    with pytest.raises(RailDisabled):
        get_rail()  # the default rail is simulation, and it is off
    with pytest.raises(RailDisabled):
        check_enabled(known_rail("simulation"))
    assert known_rail("simulation").name == "simulation"  # a rental's refund still has its rail
    assert "simulation" not in rail_names()
    with pytest.raises(UnknownRail):
        known_rail("solana")

    configure_rails(Settings(dev=True))
    assert get_rail("simulation").simulated
    assert rail_names() == ["simulation"]


def test_the_cli_adopts_the_switch_from_the_environment(monkeypatch):
    monkeypatch.setattr(config._Holder, "settings", None)  # load_settings sets the process's settings
    monkeypatch.delenv("METERLINE_SIMULATION", raising=False)
    load_settings("sqlite:///:memory:")
    with pytest.raises(RailDisabled):
        get_rail("simulation")
    load_settings("sqlite:///:memory:", dev=True)
    assert get_rail("simulation").name == "simulation"
    monkeypatch.setenv("METERLINE_SIMULATION", "true")
    load_settings("sqlite:///:memory:")
    assert get_rail("simulation").name == "simulation"
