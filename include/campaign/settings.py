"""The campaign's Params: the trigger form in the Airflow UI, and their validation.

JSON-schema on each Param lets Airflow reject a bad field before the run is
created; ``CampaignSettings.from_params`` repeats the checks that need Python
(a real ISO-8601 instant within a year of now, identifiers safe to quote and
not a system catalog or one of the project's tables, header fields without a
line break) so that a run created some other way still stops before anything
is read or sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from include import warehouse
from include.campaign.audience import EMAIL_PATTERN, MAX_EMAIL_LENGTH
from include.campaign.planner import API_MAX_RECIPIENTS_PER_REQUEST, DEFAULT_CAPS, PlanCaps
from include.campaign.windows import (
    DEFAULT_TIMEZONE,
    WEEKDAYS,
    WHOLE_DAY,
    SendWindow,
    WindowError,
    known_zones,
)

CAMPAIGN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
# An optional schema prefix, then a table name: plain identifiers only, so they can be quoted safely.
TABLE_NAME_PATTERN = r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$"
# Schemas no audience lives in. PostgreSQL keeps pg_catalog first on every search path, so an
# unqualified pg_* name is a catalog too; SQLite reserves every sqlite_* table.
SYSTEM_SCHEMAS = ("information_schema",)
SYSTEM_PREFIXES = ("pg_", "sqlite_")
# Characters that break a header line or hide in one: C0 and C1 controls, DEL, LS and PS.
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"  # regex escapes: the pattern holds no control
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")
# A JSON-schema pattern's opening: no control character anywhere. Airflow's jsonschema runs
# patterns with re.search, where a closing "$" also matches before a final line break.
_NO_CONTROL = rf"^(?![\s\S]*[{CONTROL_CHARACTERS}])"
# One plain address, as the audience's are checked: no display name, no list, no whitespace.
FROM_EMAIL_PATTERN = f"{_NO_CONTROL}{EMAIL_PATTERN}$"
# The furthest first send slot from now (a year, leap day included): a later one is a typo, and
# the planner's slot arithmetic stays far inside the datetime range.
MAX_START_AHEAD = timedelta(days=366)


def _any_case(word: str) -> str:
    """A regex for ``word`` in any letter case, in the syntax JSON-schema patterns share with Python."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


# The recipients_table Param's pattern: TABLE_NAME_PATTERN without the names _check_table refuses.
_PART = r"(?:[^.]*\.)?"  # "an optional schema., then": the lookaheads below see either part
RECIPIENTS_TABLE_PATTERN = (
    _NO_CONTROL
    + f"(?!{_PART}(?:{'|'.join(_any_case(p) for p in SYSTEM_PREFIXES)}))"
    + f"(?!(?:{'|'.join(_any_case(s) for s in SYSTEM_SCHEMAS)})\\.)"
    + f"(?!{_PART}(?:{'|'.join(_any_case(t) for t in sorted(warehouse.OWN_TABLES))})$)"
    + TABLE_NAME_PATTERN.removeprefix("^")
)
SEND, RETRY_FAILED = "send", "retry_failed"
# Steering a running campaign (campaign/steering.py): they need only the campaign_id.
PAUSE, RESUME, CANCEL = "pause", "resume", "cancel"
STEERING_MODES = (PAUSE, RESUME, CANCEL)
MODES = (SEND, RETRY_FAILED, *STEERING_MODES)
# A batch goes to the provider this long before its send_at: late enough that a pause, a cancel or
# an opt-out still reaches it, early enough that an API hiccup is retried before the slot.
DEFAULT_SUBMIT_AHEAD_MINUTES = 60
# The bad-start thresholds: Gmail's complaint ceiling; a hard-bounce rate past which a list is stale.
DEFAULT_MAX_COMPLAINT_RATE, DEFAULT_MAX_HARD_BOUNCE_RATE, DEFAULT_MIN_RESULTS_FOR_RATES = 0.003, 0.05, 200
# The frequency cap: off by default; when on, mails in other campaigns over the last week count.
DEFAULT_MAX_MAILS_PER_RECIPIENT, DEFAULT_FREQUENCY_DAYS, MAX_FREQUENCY_DAYS = 0, 7, 366
REFUSE, SEND_WHAT_FITS, IGNORE = "refuse", "send_what_fits", "ignore"
QUOTA_POLICIES = (REFUSE, SEND_WHAT_FITS, IGNORE)
JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
# The trigger form's sections, in the order the Params come.
AUDIENCE, MESSAGE, LIMITS, WINDOW, RUN = "Audience", "Message", "Limits", "Sending window", "Run"


class CampaignSettingsError(ValueError):
    """A Param value the campaign cannot run with."""


def campaign_params(*, campaign_id_required: bool = True, **defaults: Any) -> dict[str, Any]:
    """The DAG's Params, with ``defaults`` replacing the built-in defaults.

    ``campaign_id_required`` is for manual DAGs, where an empty id would make every trigger
    a new campaign; a scheduled DAG leaves it empty and each run derives its own
    (:func:`derive_campaign_id`). Called at parse time, so it only builds plain objects.
    """
    from airflow.sdk import Param

    if "campaign_id" in defaults:
        raise TypeError(
            "campaign_id cannot have a DAG-level default: every run would address the same campaign, "
            "so after the first only resumes would run; leave it empty in a scheduled DAG instead"
        )
    charset = "Letters, digits, '.', '_' and '-'."
    if campaign_id_required:
        campaign_id = Param(
            type="string",
            pattern=CAMPAIGN_ID_PATTERN,
            title="Campaign id",
            description=f"Names the campaign in the ledger, its tags and its idempotency keys. {charset}",
            section=AUDIENCE,
        )
    else:
        campaign_id = Param(
            "",
            type="string",
            pattern=f"^$|{CAMPAIGN_ID_PATTERN}",
            title="Campaign id",
            description="Empty: <dag_id>-<logical date, YYYYMMDDTHHMMZ>, the same for the run, its "
            f"retries, clears and backfills. {charset}",
            section=AUDIENCE,
        )
    params = {
        "campaign_id": campaign_id,
        "recipients_table": Param(
            "recipients",
            type="string",
            pattern=RECIPIENTS_TABLE_PATTERN,
            title="Recipients table",
            description="Warehouse table ([schema.]table) with recipient_id, email and optional "
            "variables columns.",
            section=AUDIENCE,
        ),
        "from_email": Param(
            "newsletter@example.com",
            type="string",
            maxLength=MAX_EMAIL_LENGTH,
            pattern=FROM_EMAIL_PATTERN,
            title="From address",
            description="The sender address, on a domain verified with MigoSMTP.",
            section=MESSAGE,
        ),
        "subject": Param(
            "Hello {{first_name}}",
            type="string",
            minLength=1,
            pattern=_NO_CONTROL,
            title="Subject",
            description="May use {{variable}} placeholders, filled per recipient by MigoSMTP.",
            section=MESSAGE,
        ),
        "html_body": Param(
            "<p>Hi {{first_name}}, here is our news.</p>",
            type="string",
            format="multiline",
            title="HTML body",
            description="Sent as given; MigoSMTP fills {{variable}} placeholders per recipient.",
            section=MESSAGE,
        ),
        "text_body": Param(
            "Hi {{first_name}}, here is our news.",
            type="string",
            format="multiline",
            title="Plain-text body",
            description="The text part; empty sends HTML only (one of the two bodies is needed).",
            section=MESSAGE,
        ),
        "hourly_cap": Param(
            DEFAULT_CAPS.hourly_cap,
            type="integer",
            minimum=1,
            title="Hourly cap",
            description="Recipients per clock hour the plan allows, for the whole account.",
            section=LIMITS,
        ),
        "daily_cap": Param(
            DEFAULT_CAPS.daily_cap,
            type="integer",
            minimum=1,
            title="Daily cap",
            description="Recipients per UTC day the plan allows, for the whole account.",
            section=LIMITS,
        ),
        "max_batch_size": Param(
            DEFAULT_CAPS.max_batch_size,
            type="integer",
            minimum=1,
            maximum=API_MAX_RECIPIENTS_PER_REQUEST,
            title="Recipients per request",
            description="Recipients in one bulk request, at most 1,000 (the hourly cap also bounds it).",
            section=LIMITS,
        ),
        "submit_ahead_minutes": Param(
            DEFAULT_SUBMIT_AHEAD_MINUTES,
            type="integer",
            minimum=0,
            title="Submit ahead (minutes)",
            description="A batch waits, deferred, and goes this long before its slot; 14400: 10 days ahead.",
            section=LIMITS,
        ),
        "max_complaint_rate": Param(
            DEFAULT_MAX_COMPLAINT_RATE,
            type="number",
            minimum=0,
            maximum=1,
            title="Pause above complaint rate",
            description="The reconcile pauses the campaign past this share of complaints (Gmail's ceiling).",
            section=LIMITS,
        ),
        "max_hard_bounce_rate": Param(
            DEFAULT_MAX_HARD_BOUNCE_RATE,
            type="number",
            minimum=0,
            maximum=1,
            title="Pause above hard-bounce rate",
            description="The reconcile pauses the campaign past this share of hard bounces.",
            section=LIMITS,
        ),
        "min_results_for_rates": Param(
            DEFAULT_MIN_RESULTS_FOR_RATES,
            type="integer",
            minimum=1,
            title="Results before the rates count",
            description="The rates are judged once this many recipients have a final result.",
            section=LIMITS,
        ),
        "max_mails_per_recipient": Param(
            DEFAULT_MAX_MAILS_PER_RECIPIENT,
            type="integer",
            minimum=0,
            title="Mails per recipient (frequency cap)",
            description="Reject a recipient with this many mails from other campaigns in the period; 0: off.",
            section=LIMITS,
        ),
        "frequency_days": Param(
            DEFAULT_FREQUENCY_DAYS,
            type="integer",
            minimum=1,
            maximum=MAX_FREQUENCY_DAYS,
            title="Frequency cap period (days)",
            description="The days before a recipient's slot in which other campaigns' mails count.",
            section=LIMITS,
        ),
        "default_timezone": Param(
            DEFAULT_TIMEZONE,
            type="string",
            minLength=1,
            maxLength=64,
            examples=["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Asia/Kolkata"],
            title="Default time zone",
            description="IANA zone for recipients whose timezone column is empty (or who have none).",
            section=WINDOW,
        ),
        "send_days": Param(
            list(WEEKDAYS),
            type="array",
            minItems=1,
            uniqueItems=True,
            items={"type": "string", "enum": list(WEEKDAYS)},
            examples=list(WEEKDAYS),
            title="Send on days",
            description="Weekdays a recipient may be mailed on, in the recipient's own time zone.",
            section=WINDOW,
        ),
        "send_hours": Param(
            WHOLE_DAY,
            type="string",
            pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]|24):[0-5][0-9]$",
            title="Send between (local)",
            description="HH:MM-HH:MM in the recipient's time zone, end excluded; 00:00-24:00: any hour.",
            section=WINDOW,
        ),
        "quota_policy": Param(
            REFUSE,
            enum=list(QUOTA_POLICIES),
            values_display={
                REFUSE: "Refuse a campaign that does not fit",
                SEND_WHAT_FITS: "Send what fits, the rest after the reset",
                IGNORE: "Do not check the quota",
            },
            title="Monthly quota",
            description="What to do when the campaign needs more than the month's quota has left.",
            section=LIMITS,
        ),
        "ignore_suppressions": Param(
            False,
            type="boolean",
            title="Ignore suppressions",
            description="Transactional mail only: send to addresses that bounced hard, complained or "
            "unsubscribed.",
            section=AUDIENCE,
        ),
        "start_at": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="First send slot",
            description="UTC; empty: the run's logical date (now if none). Not before now, at most a year "
            "ahead.",
            section=RUN,
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Plan and record the batches and preview them; send nothing.",
            section=RUN,
        ),
        "mode": Param(
            SEND,
            enum=list(MODES),
            values_display={
                SEND: "Send the campaign (or finish it)",
                RETRY_FAILED: "Resend only its unsent batches",
                PAUSE: "Pause it: no batch is submitted until resumed",
                RESUME: "Resume it after a pause",
                CANCEL: "Cancel it: nothing more is sent",
            },
            title="Mode",
            description="retry_failed resends unsent batches as planned; "
            "pause, resume, cancel need a campaign_id.",
            section=RUN,
        ),
    }
    # Airflow validates every Param with jsonschema several times per task, and each validation
    # first checks the schema against its meta-schema: draft 2020-12's (the default) costs about
    # 2.5 times draft-07's, which says all these schemas need. Measured: 6.5 -> 2.6 ms a validation.
    for param in params.values():
        param.schema["$schema"] = JSON_SCHEMA_DRAFT
    unknown = sorted(set(defaults) - set(params))
    if unknown:
        raise TypeError(f"unknown campaign Param(s) {', '.join(unknown)}; known: {', '.join(params)}")
    for name, value in defaults.items():
        params[name] = Param(value, params[name].description, schema=params[name].schema)
        try:
            params[name].resolve()  # a bad default fails when the DAG file is parsed, naming the Param
        except (ValueError, TypeError) as err:
            raise ValueError(f"default {value!r} for campaign Param {name!r} is invalid: {err}") from None
    return params


def derive_campaign_id(dag_id: str, logical_date: datetime) -> str:
    """``<dag_id>-<logical date in UTC as YYYYMMDDTHHMMZ>``, e.g. ``weekly_newsletter-20261207T0900Z``."""
    return f"{dag_id}-{logical_date.astimezone(UTC):%Y%m%dT%H%MZ}"


def _parse_start_at(value: str | None, default: datetime) -> datetime:
    if value in (None, ""):
        return default
    if not isinstance(value, str):
        raise CampaignSettingsError(f"start_at {value!r} is not an ISO-8601 date-time")
    try:
        moment = warehouse.parse_utc(value)
    except ValueError:
        raise CampaignSettingsError(f"start_at {value!r} is not an ISO-8601 date-time") from None
    if moment.tzinfo is None:
        raise CampaignSettingsError(f"start_at {value!r} has no UTC offset; write e.g. {value}Z")
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00+01:00 or 9999-12-31T23:59-01:00
        raise CampaignSettingsError(f"start_at {value!r} is out of the representable date range") from None


def _number(params: dict[str, Any], name: str, default: float, kind: type) -> Any:
    """A numeric Param, 0 or more: an integer Param refuses a fraction, neither takes a bool."""
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise CampaignSettingsError(f"{name} {value!r} is not a{'n integer' if kind is int else ' number'}")
    if value < 0:
        raise CampaignSettingsError(f"{name} {value!r} is negative")
    if kind is int and value > 10**7:
        raise CampaignSettingsError(f"{name} {value!r} is out of range")
    return kind(value)


def _check_no_control(name: str, value: str) -> None:
    """A header field's value: one line, nothing invisible (a line break would start a header)."""
    found = _CONTROL.search(value)
    if found:
        raise CampaignSettingsError(
            f"{name} holds a control character or line break (U+{ord(found.group()):04X} at "
            f"position {found.start()})"
        )


def _check_table(table: str) -> None:
    """Refuse a system catalog or one of the project's own tables as the audience. Compared as
    ``quote_table`` will name it (each part as written), in any letter case."""
    parts = table.lower().split(".")
    if parts[0] in SYSTEM_SCHEMAS and len(parts) == 2:
        raise CampaignSettingsError(f"recipients_table {table!r} is in the system schema {parts[0]}")
    for part in parts:
        if part.startswith(SYSTEM_PREFIXES):
            raise CampaignSettingsError(
                f"recipients_table {table!r} names a system catalog ({part!r}: no part may start with "
                f"{' or '.join(SYSTEM_PREFIXES)})"
            )
    if parts[-1] in warehouse.OWN_TABLES:
        raise CampaignSettingsError(
            f"recipients_table {table!r} is one of the campaign's own tables, not an audience"
        )


@dataclass(frozen=True)
class CampaignSettings:
    campaign_id: str
    recipients_table: str
    from_email: str
    subject: str
    html_body: str
    text_body: str
    caps: PlanCaps
    start_at: datetime
    dry_run: bool
    mode: str
    quota_policy: str = REFUSE
    ignore_suppressions: bool = False
    submit_ahead_minutes: int = DEFAULT_SUBMIT_AHEAD_MINUTES
    max_complaint_rate: float = DEFAULT_MAX_COMPLAINT_RATE
    max_hard_bounce_rate: float = DEFAULT_MAX_HARD_BOUNCE_RATE
    min_results_for_rates: int = DEFAULT_MIN_RESULTS_FOR_RATES
    window: SendWindow = SendWindow()
    default_timezone: str = DEFAULT_TIMEZONE
    max_mails_per_recipient: int = DEFAULT_MAX_MAILS_PER_RECIPIENT
    frequency_days: int = DEFAULT_FREQUENCY_DAYS

    @property
    def send_days(self) -> list[str]:
        return [WEEKDAYS[d] for d in sorted(self.window.days)]

    @property
    def send_hours(self) -> str:
        return self.window.hours_text

    @property
    def steers(self) -> bool:
        """A pause, resume or cancel: the run changes the campaign's state, it plans nothing new."""
        return self.mode in STEERING_MODES

    @classmethod
    def from_params(
        cls,
        params: dict[str, Any],
        now: datetime | None = None,
        *,
        dag_id: str | None = None,
        logical_date: datetime | None = None,
    ) -> CampaignSettings:
        """Validated settings. An empty campaign_id is derived from ``dag_id`` and ``logical_date``;
        an empty start_at is ``logical_date`` (else ``now``); a start_at before ``now`` becomes ``now``,
        so a backfill of a past week sends from now, within the caps."""
        now = now or datetime.now(UTC)
        campaign_id = str(params.get("campaign_id") or "")
        if not campaign_id:
            if dag_id is None or logical_date is None:
                raise CampaignSettingsError(
                    "campaign_id is empty and the run has no logical date to name the campaign by; "
                    "give a campaign_id, or trigger the run with a logical date"
                )
            campaign_id = derive_campaign_id(dag_id, logical_date)
        if not re.fullmatch(CAMPAIGN_ID_PATTERN, campaign_id):
            raise CampaignSettingsError(
                f"campaign_id {campaign_id!r} must be 1-100 letters, digits, '.', '_' or '-'"
            )
        table = str(params.get("recipients_table") or "")
        if not re.fullmatch(TABLE_NAME_PATTERN, table):
            raise CampaignSettingsError(f"recipients_table {table!r} is not a plain [schema.]table name")
        _check_table(table)
        from_email = str(params.get("from_email") or "")
        _check_no_control("from_email", from_email)
        if len(from_email) > MAX_EMAIL_LENGTH or not re.fullmatch(FROM_EMAIL_PATTERN, from_email):
            raise CampaignSettingsError(
                f"from_email {from_email!r} is not one plain address like news@example.com "
                f"(no display name, list, comma or space; at most {MAX_EMAIL_LENGTH} characters)"
            )
        subject = params.get("subject")
        if not isinstance(subject, str) or not subject.strip():
            raise CampaignSettingsError("subject is empty")
        _check_no_control("subject", subject)
        html_body, text_body = params.get("html_body") or "", params.get("text_body") or ""
        if not (html_body.strip() or text_body.strip()):
            raise CampaignSettingsError("html_body and text_body are both empty; give at least one")
        mode = params.get("mode", "send")
        if mode not in MODES:
            raise CampaignSettingsError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        quota_policy = params.get("quota_policy", REFUSE)
        if quota_policy not in QUOTA_POLICIES:
            raise CampaignSettingsError(
                f"quota_policy {quota_policy!r} is not one of {', '.join(QUOTA_POLICIES)}"
            )
        try:
            caps = PlanCaps(
                max_batch_size=params.get("max_batch_size", DEFAULT_CAPS.max_batch_size),
                hourly_cap=params.get("hourly_cap", DEFAULT_CAPS.hourly_cap),
                daily_cap=params.get("daily_cap", DEFAULT_CAPS.daily_cap),
            )
        except ValueError as err:
            raise CampaignSettingsError(str(err)) from None
        limits = {
            "submit_ahead_minutes": _number(
                params, "submit_ahead_minutes", DEFAULT_SUBMIT_AHEAD_MINUTES, int
            ),
            "max_complaint_rate": _number(params, "max_complaint_rate", DEFAULT_MAX_COMPLAINT_RATE, float),
            "max_hard_bounce_rate": _number(
                params, "max_hard_bounce_rate", DEFAULT_MAX_HARD_BOUNCE_RATE, float
            ),
            "min_results_for_rates": _number(
                params, "min_results_for_rates", DEFAULT_MIN_RESULTS_FOR_RATES, int
            ),
        }
        for name in ("max_complaint_rate", "max_hard_bounce_rate"):
            if not 0 <= limits[name] <= 1:
                raise CampaignSettingsError(f"{name} {limits[name]!r} is not a rate between 0 and 1")
        if limits["min_results_for_rates"] < 1:
            raise CampaignSettingsError("min_results_for_rates must be at least 1")
        limits["max_mails_per_recipient"] = _number(
            params, "max_mails_per_recipient", DEFAULT_MAX_MAILS_PER_RECIPIENT, int
        )
        limits["frequency_days"] = _number(params, "frequency_days", DEFAULT_FREQUENCY_DAYS, int)
        if not 1 <= limits["frequency_days"] <= MAX_FREQUENCY_DAYS:
            raise CampaignSettingsError(
                f"frequency_days {limits['frequency_days']} is not between 1 and {MAX_FREQUENCY_DAYS}"
            )
        default_timezone = params.get("default_timezone") or DEFAULT_TIMEZONE
        if not isinstance(default_timezone, str) or default_timezone.strip() not in known_zones():
            raise CampaignSettingsError(
                f"default_timezone {default_timezone!r} is not an IANA time zone (such as Europe/Berlin)"
            )
        try:
            window = SendWindow.parse(
                params.get("send_days") or list(WEEKDAYS), params.get("send_hours") or WHOLE_DAY
            )
        except WindowError as err:
            raise CampaignSettingsError(str(err)) from None
        start_at = max(_parse_start_at(params.get("start_at"), logical_date or now), now)
        try:
            latest = now + MAX_START_AHEAD
        except OverflowError:
            latest = datetime.max.replace(tzinfo=UTC)
        if start_at > latest:
            given = "" if params.get("start_at") else " (empty: the run's logical date)"
            raise CampaignSettingsError(
                f"start_at {start_at:%Y-%m-%dT%H:%MZ}{given} is more than {MAX_START_AHEAD.days} days "
                f"after now ({now:%Y-%m-%dT%H:%MZ}); a campaign starts within a year"
            )
        return cls(
            campaign_id=campaign_id,
            recipients_table=table,
            from_email=from_email,
            subject=params["subject"],
            html_body=html_body,
            text_body=text_body,
            caps=caps,
            start_at=start_at,
            dry_run=bool(params.get("dry_run", False)),
            mode=mode,
            quota_policy=quota_policy,
            ignore_suppressions=params.get("ignore_suppressions") is True,
            window=window,
            default_timezone=default_timezone.strip(),
            **limits,
        )


def for_task(
    params: dict[str, Any], dag_id: str | None = None, logical_date: datetime | None = None
) -> CampaignSettings:
    """The run's settings, for a task: bad Params fail the task without retries, naming the Param."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return CampaignSettings.from_params(params, dag_id=dag_id, logical_date=logical_date)
    except CampaignSettingsError as err:
        raise AirflowFailException(f"invalid campaign Params: {err}") from err
