"""``include.migosmtp.contract``: the facts both sides of the API share, once."""

from __future__ import annotations

import importlib
import subprocess
import sys

from include.migosmtp import contract
from tests.conftest import REPO_ROOT
from tests.migosmtp.test_webhooks import VECTOR_BODY, VECTOR_SECRET, VECTOR_SIGNATURE, VECTOR_TIMESTAMP


def test_sign_matches_a_vector_computed_outside_this_code_base():
    assert contract.sign(VECTOR_SECRET, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_the_final_types_are_event_types():
    assert set(contract.FINAL_TYPES) < set(contract.EVENT_TYPES)
    assert set(contract.EVENT_TYPES) - set(contract.FINAL_TYPES) == {"deferred"}


def test_the_sandbox_and_the_receiver_use_the_same_definitions():
    delivery = importlib.import_module("sandbox.delivery")
    webhooks = importlib.import_module("include.migosmtp.webhooks")
    assert delivery.sign is webhooks.sign is contract.sign
    assert delivery.SIGNATURE_HEADER == contract.SIGNATURE_HEADER


def test_it_imports_nothing_but_the_standard_library():
    # The sandbox imports it; it must not pull Airflow (or anything installed) into the sandbox.
    probe = (
        "import sys, include.migosmtp.contract; "
        "print(sorted(m for m in sys.modules if m.startswith('airflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
