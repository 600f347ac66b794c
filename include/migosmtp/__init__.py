"""What MigoSMTP is: its HTTP client and errors, its error table as a retry policy, its webhooks,
and the contract facts both sides share (``contract``).

Campaign code reaches it only through ``include.campaign.provider``. The sandbox that speaks
this contract on loopback is a development tool beside the package (``sandbox/`` at the top).
"""
