"""The halt signal in the warehouse: first batch to halt a run wins; runs are independent."""

from __future__ import annotations

import pytest

from include.campaign import halts
from include.warehouse import ensure_schema


class TestHalt:
    def test_the_first_halt_of_a_run_wins_and_later_ones_do_not_alert(self, warehouse):
        ensure_schema(warehouse)

        assert halts.halt(warehouse, "c1", "run-1", 4, "402 quota_exceeded") is True
        assert halts.halt(warehouse, "c1", "run-1", 7, "402 quota_exceeded again") is False

        assert halts.current(warehouse, "c1", "run-1")["batch_number"] == 4

    def test_a_halt_binds_only_its_own_run_and_campaign(self, warehouse):
        ensure_schema(warehouse)
        halts.halt(warehouse, "c1", "run-1", 1, "401 invalid_api_key")

        assert halts.current(warehouse, "c1", "run-2") is None
        assert halts.current(warehouse, "c2", "run-1") is None
        assert halts.halt(warehouse, "c1", "run-2", 1, "401 invalid_api_key") is True

    def test_a_warehouse_error_is_not_mistaken_for_a_lost_race(self, warehouse):
        # No schema: the insert fails for another reason, and no halt row exists to explain it.
        with pytest.raises(Exception, match="no such table|does not exist"):
            halts.halt(warehouse, "c1", "run-1", 1, "402")

    def test_lifting_ends_only_that_runs_halt_and_a_later_error_halts_it_again(self, warehouse):
        ensure_schema(warehouse)
        halts.halt(warehouse, "c1", "run-1", 1, "401 invalid_api_key")
        halts.halt(warehouse, "c1", "run-2", 1, "401 invalid_api_key")

        assert halts.lift(warehouse, "c1", "run-1") is True

        assert halts.current(warehouse, "c1", "run-1") is None
        assert halts.current(warehouse, "c1", "run-2") is not None
        assert halts.lift(warehouse, "c1", "run-1") is False
        assert halts.halt(warehouse, "c1", "run-1", 2, "402 quota_exceeded") is True
