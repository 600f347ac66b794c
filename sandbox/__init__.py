"""MigoSMTP sandbox: a local HTTP server that implements the provider API contract.

Run it with ``python -m sandbox --db PATH --api-key KEY``, or
from tests through :class:`SandboxProcess`. Besides the ``/v1`` API it offers
admin endpoints under ``/_sandbox/`` (health, reset, faults, settings, record,
requests) for tests to inject faults and inspect what was stored.

Fault actions: ``status`` (answer with an error status, after ``seconds``), ``latency`` (sleep,
then handle), ``drop_after_accept`` (handle, then close the connection without
answering), ``drop`` (close without handling), ``malformed`` (answer 202
with a body that is not JSON, or ``body`` if given, storing the batch only if ``accept`` is
true), ``break_body`` (handle, then start a chunked answer and close the connection
in the middle of it) and ``trickle`` (handle, then send the whole answer, status line
first, a few bytes every quarter second over ``seconds``).
"""

from sandbox.harness import SandboxError, SandboxProcess
from sandbox.server import SandboxServer, Settings

__all__ = ["SandboxError", "SandboxProcess", "SandboxServer", "Settings"]
