"""What MigoSMTP is: its HTTP client and errors, its error table as a retry policy, its webhooks.

``sandbox`` is a development tool (a local server speaking the API contract);
nothing a worker runs imports it.
"""
