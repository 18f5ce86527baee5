"""The capacity model: a run's CPU per order turned into orders/s per core and cores per rate."""

import json

import pytest
from django.core.management import CommandError, call_command

from loadtest import capacity


def _summary(**per_order):
    cpu = {"orders": 1000, **{f"{key}_per_order": value for key, value in per_order.items()}}
    return {"figures": {"orders_per_s": 400.0}, "machine": {"cores": "2"}, "cpu": cpu}


def test_each_kind_costs_its_cpu_per_order_and_the_rates_take_that_many_cores():
    model = capacity.model_from_summary(
        _summary(request_ms=2.0, settlement_ms=0.25, periodic_ms=0.2, postgres_ms=0.8, redis_ms=0.14, machine_ms=5.0),
        run="r",
    )

    assert model.kind("request_ms").orders_per_core_s == 500
    assert model.kind("postgres_ms").cores_at(10_000) == pytest.approx(8.0)
    assert model.one_machine_orders_per_s == pytest.approx(400.0)  # 2 cores x 1000 / 5 ms
    assert model.first_to_run_out.label == "web (gunicorn workers)"
    table = capacity.render(model)
    # 100,000 orders/s: 200 web cores, 80 PostgreSQL cores (more than one machine), Redis 14 cores
    # of its one thread at 70% each: 20 masters.
    assert "| 100,000 | 200.0 | 25.0 | 20.0 | 80.0 (past one machine: shard) | 20 |" in table
    assert "| 1,000 | 2.0 | 0.2 | 0.2 | 0.8 | 1 |" in table


def test_a_kind_the_run_did_not_measure_shows_as_unknown_not_zero():
    model = capacity.model_from_summary(_summary(request_ms=2.0, postgres_ms=0.8), run="r")

    assert model.kind("redis_ms").cores_at(1000) is None
    assert "| Redis | - | - |" in capacity.render(model)


def test_a_comparison_folder_gives_one_model_per_run(tmp_path):
    both = {"sync": _summary(request_ms=2.0), "async": _summary(request_ms=1.5), "ratios_async_over_sync": {}}
    (tmp_path / "summary.json").write_text(json.dumps(both))

    models = capacity.load_models(tmp_path)

    assert [(m.run.rsplit("/", 1)[1], m.kind("request_ms").ms_per_order) for m in models] == [
        ("sync", 2.0),
        ("async", 1.5),
    ]


def test_the_command_refuses_a_folder_without_a_report(tmp_path):
    with pytest.raises(CommandError, match=r"holds no summary\.json"):
        call_command("capacity_model", str(tmp_path))
