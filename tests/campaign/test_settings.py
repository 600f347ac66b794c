"""Unit tests of the campaign's Params: ``CampaignSettings.from_params`` and ``campaign_params()``.

``campaign_params()`` is checked through Airflow's own ``ParamsDict``/``Param``
validation (the JSON-schema Airflow applies to a trigger's conf), and
``from_params`` through the settings it builds or the field its error names.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError

from include.campaign.planner import PlanCaps
from include.campaign.settings import CampaignSettings, CampaignSettingsError, campaign_params
from include.campaign.windows import WEEKDAYS
from tests.conftest import REPO_ROOT
from tests.helpers import DOCUMENTED_PARAMS

NOW = datetime(2026, 11, 28, 18, 4, 5, tzinfo=UTC)
DEFAULTS = {
    "recipients_table": "recipients",
    "from_email": "newsletter@example.com",
    "subject": "Hello {{first_name}}",
    "html_body": "<p>Hi {{first_name}}, here is our news.</p>",
    "text_body": "Hi {{first_name}}, here is our news.",
    "hourly_cap": 150,
    "daily_cap": 1500,
    "max_batch_size": 1000,
    "start_at": None,
    "dry_run": False,
    "mode": "send",
    "quota_policy": "refuse",
    "ignore_suppressions": False,
    "submit_ahead_minutes": 60,
    "max_complaint_rate": 0.003,
    "max_hard_bounce_rate": 0.05,
    "min_results_for_rates": 200,
    "max_mails_per_recipient": 0,
    "frequency_days": 7,
    "default_timezone": "UTC",
    "send_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    "send_hours": "00:00-24:00",
}


SECTIONS = ("Audience", "Message", "Limits", "Sending window", "Run")
README = REPO_ROOT / "README.md"


def readme_params_table() -> list[tuple[tuple[str, ...], str]]:
    """The README's Params table: each row's Params (a row may name several) and its default cell."""
    section = README.read_text().split("### Params", 1)[1].split("\n###", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first, default = (cell.strip() for cell in line.strip("|").split("|")[:2])
            rows.append((tuple(re.findall(r"`(\w+)`", first)), default))
    return rows


def readme_default(value: Any) -> str:
    """A default as the README's table writes it: booleans and numbers plain, strings as code."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "all seven" if value == list(WEEKDAYS) else ", ".join(f"`{v}`" for v in value)
    return str(value) if isinstance(value, int) else f"`{value}`"


def params(**overrides: Any) -> dict[str, Any]:
    """A run's params: the documented defaults, a campaign id, and the overrides."""
    return {**DEFAULTS, "campaign_id": "winter-sale.2026_1", **overrides}


def validate_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """Validate a trigger conf the way Airflow does: merge into the DAG's ParamsDict, then validate."""
    params_dict = ParamsDict(campaign_params())
    params_dict.update(conf)
    return params_dict.validate()


class TestCampaignSettingsFromParams:
    def test_defaults_with_a_campaign_id_give_the_documented_settings(self):
        settings = CampaignSettings.from_params(params(), now=NOW)

        assert settings == CampaignSettings(
            campaign_id="winter-sale.2026_1",
            recipients_table="recipients",
            from_email="newsletter@example.com",
            subject="Hello {{first_name}}",
            html_body="<p>Hi {{first_name}}, here is our news.</p>",
            text_body="Hi {{first_name}}, here is our news.",
            caps=PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=1500),
            start_at=NOW,
            dry_run=False,
            mode="send",
        )

    def test_the_params_own_defaults_are_valid_settings(self):
        defaults = {name: param.value for name, param in campaign_params().items() if name != "campaign_id"}

        settings = CampaignSettings.from_params({**defaults, "campaign_id": "c1"}, now=NOW)

        assert settings.caps == PlanCaps(max_batch_size=1000, hourly_cap=150, daily_cap=1500)
        assert (settings.recipients_table, settings.start_at, settings.dry_run) == ("recipients", NOW, False)

    def test_given_values_are_kept(self):
        settings = CampaignSettings.from_params(
            params(
                campaign_id="c" * 100,
                recipients_table="marketing.recipients_2026",
                hourly_cap=1,
                daily_cap=7,
                max_batch_size=1,
                dry_run=True,
                html_body="",
            ),
            now=NOW,
        )

        assert settings.campaign_id == "c" * 100
        assert settings.recipients_table == "marketing.recipients_2026"
        assert settings.caps == PlanCaps(max_batch_size=1, hourly_cap=1, daily_cap=7)
        assert settings.dry_run is True
        assert (settings.html_body, settings.text_body) == ("", "Hi {{first_name}}, here is our news.")

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("campaign_id", "summer sale"),
            ("campaign_id", "c" * 101),
            ("campaign_id", ""),
            ("campaign_id", None),
            ("campaign_id", "-starts-with-dash"),
            ("campaign_id", "c1/../x"),
            ("recipients_table", "recipients; DROP TABLE recipients"),
            ("recipients_table", 'recipients"'),
            ("recipients_table", "a.b.c"),
            ("recipients_table", "a...b"),
            ("recipients_table", "1recipients"),
            ("recipients_table", "t" * 64),
            ("recipients_table", ""),
            ("from_email", "newsletter.example.com"),
            ("from_email", "news@letter@example.com"),
            ("from_email", ""),
            ("subject", ""),
            ("subject", "   "),
            ("mode", "x"),
            ("mode", "SEND"),
            ("quota_policy", "send"),
            ("hourly_cap", 0),
            ("daily_cap", 0),
            ("max_batch_size", 0),
            ("hourly_cap", -150),
            ("max_batch_size", 1001),
            ("start_at", "next tuesday"),
            ("start_at", "2026-12-01T09:00:00"),
            ("start_at", "2026-12-01"),
        ],
    )
    def test_an_invalid_field_is_refused_naming_it(self, field, value):
        with pytest.raises(CampaignSettingsError, match=field):
            CampaignSettings.from_params(params(**{field: value}), now=NOW)

    @pytest.mark.parametrize(("html_body", "text_body"), [("", ""), ("  ", "\n"), (None, None)])
    def test_both_bodies_empty_is_refused(self, html_body, text_body):
        with pytest.raises(CampaignSettingsError, match="html_body and text_body are both empty"):
            CampaignSettings.from_params(params(html_body=html_body, text_body=text_body), now=NOW)

    @pytest.mark.parametrize(("html_body", "text_body"), [("<p>Hi</p>", ""), ("", "Hi")])
    def test_one_body_is_enough(self, html_body, text_body):
        settings = CampaignSettings.from_params(params(html_body=html_body, text_body=text_body), now=NOW)

        assert (settings.html_body, settings.text_body) == (html_body, text_body)

    @pytest.mark.parametrize("start_at", [None, ""])
    def test_empty_start_at_means_the_now_passed_in(self, start_at):
        settings = CampaignSettings.from_params(params(start_at=start_at), now=NOW)

        assert settings.start_at == NOW

    def test_without_now_an_empty_start_at_is_the_current_time_in_utc(self):
        before = datetime.now(UTC)
        settings = CampaignSettings.from_params(params(start_at=None))
        after = datetime.now(UTC)

        assert before <= settings.start_at <= after
        assert settings.start_at.utcoffset() == timedelta(0)

    @pytest.mark.parametrize(
        ("start_at", "expected"),
        [
            ("2026-12-01T09:00:00Z", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
            ("2026-12-01T09:00:00+00:00", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
            ("2026-12-01T09:00:00+02:00", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
            ("2026-12-01T01:30:00+02:00", datetime(2026, 11, 30, 23, 30, tzinfo=UTC)),
            ("2026-12-01T09:00:00-05:00", datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),
        ],
    )
    def test_start_at_with_an_offset_is_normalised_to_utc(self, start_at, expected):
        settings = CampaignSettings.from_params(params(start_at=start_at), now=NOW)

        assert settings.start_at == expected
        assert settings.start_at.tzinfo == UTC
        assert (settings.start_at.hour, settings.start_at.day) == (expected.hour, expected.day)

    def test_start_at_without_offset_suggests_writing_it_in_utc(self):
        with pytest.raises(CampaignSettingsError, match="write e.g. 2026-12-01T09:00:00Z"):
            CampaignSettings.from_params(params(start_at="2026-12-01T09:00:00"), now=NOW)

    def test_cap_errors_keep_the_plan_caps_message(self):
        with pytest.raises(CampaignSettingsError, match="^max_batch_size 1001 exceeds the API limit of 1000"):
            CampaignSettings.from_params(params(max_batch_size=1001), now=NOW)


class TestCampaignParams:
    def test_the_readme_documents_every_param_once_and_no_others(self):
        documented = [name for names, _ in readme_params_table() for name in names]

        assert sorted(documented) == sorted(DOCUMENTED_PARAMS)

    def test_the_readme_gives_the_default_of_each_param_in_a_row_of_its_own(self):
        params_ = campaign_params()
        shown = {
            names[0]: default
            for names, default in readme_params_table()
            if len(names) == 1 and names[0] != "campaign_id" and params_[names[0]].value is not None
        }

        assert len(shown) == 17  # every Param but the message's four, campaign_id and start_at
        assert shown == {name: readme_default(params_[name].value) for name in shown}

    def test_every_param_has_its_default_pinned_here(self):
        assert sorted(DOCUMENTED_PARAMS) == sorted(["campaign_id", *DEFAULTS])

    def test_campaign_id_is_required_and_has_no_default(self):
        campaign_id = campaign_params()["campaign_id"]

        assert campaign_id.has_value is False
        assert "default" not in campaign_id.schema
        with pytest.raises(ParamValidationError, match="campaign_id"):
            ParamsDict(campaign_params()).validate()

    def test_every_other_param_has_its_documented_default(self):
        params_ = campaign_params()

        assert {name: params_[name].value for name in DEFAULTS} == DEFAULTS

    def test_defaults_plus_a_campaign_id_validate(self):
        assert validate_conf({"campaign_id": "c1"}) == {**DEFAULTS, "campaign_id": "c1"}

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("hourly_cap", 1),
            ("daily_cap", 1),
            ("max_batch_size", 1000),
            ("recipients_table", "marketing.recipients_2026"),
            ("campaign_id", "Winter_2026.v2-final"),
            ("start_at", "2026-12-01T09:00:00Z"),
            ("dry_run", True),
        ],
    )
    def test_a_valid_value_is_accepted(self, field, value):
        validated = validate_conf({"campaign_id": "c1", field: value})

        assert validated[field] == value

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("hourly_cap", 0),
            ("daily_cap", 0),
            ("max_batch_size", 0),
            ("max_batch_size", 1001),
            ("hourly_cap", "150"),
            ("hourly_cap", 1.5),
            ("campaign_id", "summer sale"),
            ("campaign_id", "-x"),
            ("campaign_id", "c" * 101),
            ("recipients_table", "recipients; DROP TABLE recipients"),
            ("recipients_table", 'recipients"'),
            ("recipients_table", "a.b.c"),
            ("from_email", "newsletter.example.com"),
            ("subject", ""),
            ("mode", "x"),
            ("quota_policy", "refuse_all"),
            ("dry_run", "yes"),
        ],
    )
    def test_an_invalid_value_is_rejected_by_the_param_schema(self, field, value):
        with pytest.raises(ParamValidationError, match=f"Invalid input for param {field}"):
            validate_conf({"campaign_id": "c1", field: value})

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("hourly_cap", 0),
            ("max_batch_size", 1001),
            ("campaign_id", "summer sale"),
            ("recipients_table", "a.b.c"),
            ("mode", "x"),
            ("quota_policy", ""),
            ("recipients_table", "pg_catalog.pg_authid"),
            ("recipients_table", "Information_Schema.tables"),
            ("recipients_table", "sqlite_master"),
            ("recipients_table", "pg_user"),
            ("recipients_table", "email_batch_ledger"),
            ("recipients_table", "public.Email_Campaigns"),
            ("recipients_table", "recipients\n"),
            ("from_email", "a@example.com, b@example.com"),
            ("from_email", "News <news@example.com>"),
            ("from_email", "news@example.com\n"),
            ("from_email", "news@example.com\u2028"),
            ("subject", "Hello\n"),
            ("subject", "Hello\r\nBcc: x@example.com"),
            ("subject", "Hi\u0085there"),
        ],
    )
    def test_the_param_schema_and_from_params_refuse_the_same_values(self, field, value):
        with pytest.raises(ParamValidationError):
            campaign_params()[field].resolve(value)
        with pytest.raises(CampaignSettingsError, match=field):
            CampaignSettings.from_params(params(**{field: value}), now=NOW)


class TestTheTriggerForm:
    """What Airflow's trigger form is drawn from: each Param's schema."""

    def test_every_param_has_a_title_a_one_line_description_and_a_section(self):
        for name, param in campaign_params().items():
            assert param.schema.get("title"), name
            assert param.description and "\n" not in param.description and len(param.description) <= 110, name
            assert param.schema.get("section") in SECTIONS, name

    def test_sections_come_in_order_audience_message_limits_window_run(self):
        sections = [p.schema["section"] for p in campaign_params().values()]
        assert list(dict.fromkeys(sections)) == list(SECTIONS)

    def test_bodies_are_multi_line_start_at_a_date_time_and_the_choices_drop_downs(self):
        params_ = campaign_params()
        assert {params_[n].schema.get("format") for n in ("html_body", "text_body")} == {"multiline"}
        assert params_["start_at"].schema["format"] == "date-time"
        for name, choices in (
            ("mode", {"send", "retry_failed", "pause", "resume", "cancel"}),
            ("quota_policy", {"refuse", "send_what_fits", "ignore"}),
        ):
            assert set(params_[name].schema["enum"]) == choices
            assert set(params_[name].schema["values_display"]) == choices

    def test_a_default_given_by_a_dag_keeps_the_fields_form(self):
        body = campaign_params(html_body="<p>Weekly</p>")["html_body"]
        assert (body.value, body.schema["format"], body.schema["section"]) == (
            "<p>Weekly</p>",
            "multiline",
            "Message",
        )


class TestTheRunNamesItsCampaign:
    MONDAY = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)

    def test_the_derived_id_is_the_dag_id_and_the_logical_date_in_utc(self):
        from zoneinfo import ZoneInfo

        from include.campaign.settings import derive_campaign_id

        assert derive_campaign_id("weekly_newsletter", self.MONDAY) == "weekly_newsletter-20261207T0900Z"
        berlin = self.MONDAY.astimezone(ZoneInfo("Europe/Berlin"))  # 10:00 there
        assert derive_campaign_id("weekly_newsletter", berlin) == "weekly_newsletter-20261207T0900Z"

    def test_an_empty_campaign_id_is_derived_from_the_run(self):
        settings = CampaignSettings.from_params(
            params(campaign_id=""), now=NOW, dag_id="weekly_newsletter", logical_date=self.MONDAY
        )

        assert settings.campaign_id == "weekly_newsletter-20261207T0900Z"

    def test_a_given_campaign_id_wins_over_the_derived_one(self):
        settings = CampaignSettings.from_params(
            params(campaign_id="special"), now=NOW, dag_id="weekly_newsletter", logical_date=self.MONDAY
        )

        assert settings.campaign_id == "special"

    @pytest.mark.parametrize("dag_id", [None, "weekly_newsletter"])
    def test_an_empty_campaign_id_without_a_logical_date_is_refused(self, dag_id):
        with pytest.raises(CampaignSettingsError, match="no logical date to name the campaign by"):
            CampaignSettings.from_params(params(campaign_id=""), now=NOW, dag_id=dag_id, logical_date=None)

    def test_a_derived_id_longer_than_100_characters_is_refused(self):
        with pytest.raises(CampaignSettingsError, match="must be 1-100 letters"):
            CampaignSettings.from_params(params(campaign_id=""), now=NOW, dag_id="d" * 90, logical_date=NOW)

    def test_an_empty_start_at_is_the_logical_date(self):
        settings = CampaignSettings.from_params(params(start_at=None), now=NOW, logical_date=self.MONDAY)

        assert settings.start_at == self.MONDAY

    @pytest.mark.parametrize("start_at", [None, "2026-11-02T09:00:00Z"])
    def test_no_start_is_ever_before_now(self, start_at):
        last_month = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a backfilled week

        settings = CampaignSettings.from_params(params(start_at=start_at), now=NOW, logical_date=last_month)

        assert settings.start_at == NOW

    def test_a_scheduled_dags_campaign_id_may_be_empty_and_a_manual_ones_may_not(self):
        scheduled = ParamsDict(campaign_params(campaign_id_required=False))
        manual = ParamsDict(campaign_params())

        assert scheduled.validate()["campaign_id"] == ""
        with pytest.raises(ParamValidationError):
            manual.validate()
        with pytest.raises(ParamValidationError, match="campaign_id"):
            scheduled.update({"campaign_id": "bad id!"})


class TestHostileParams:
    """Issue 20: values that pass a loose check but break every batch, or the planner, are refused."""

    @pytest.mark.parametrize(
        "from_email",
        [
            "a@example.com, b@example.com",
            "a@example.com,b@example.com",
            "News <news@example.com>",
            "news@example.com\r\nBcc: x@example.com",
            "news@example.com\n",
            " news@example.com",
            "news @example.com",
            "news@exam ple.com",
            "news@example.com\x00",
            "news@example.com\u2028",
            "news@example.com\u0085",
            "a@b@example.com",
            "news@example.com,",
            "<news@example.com>",
            '"News"@example.com',
        ],
    )
    def test_from_email_must_be_one_plain_address(self, from_email):
        with pytest.raises(CampaignSettingsError, match="from_email"):
            CampaignSettings.from_params(params(from_email=from_email), now=NOW)

    @pytest.mark.parametrize("from_email", ["news@example.com", "first.last+tag@mail.example.co.uk"])
    def test_a_plain_from_email_is_accepted(self, from_email):
        assert CampaignSettings.from_params(params(from_email=from_email), now=NOW).from_email == from_email

    @pytest.mark.parametrize(
        "char", ["\r", "\n", "\t", "\x00", "\x1f", "\x7f", "\x9b", "\u0085", "\u2028", "\u2029"]
    )
    def test_subject_refuses_control_characters_and_line_breaks(self, char):
        with pytest.raises(CampaignSettingsError, match="subject"):
            CampaignSettings.from_params(params(subject=f"Hello{char}Bcc: x@example.com"), now=NOW)

    def test_the_trigger_form_refuses_a_subject_with_a_line_break(self):
        with pytest.raises(ParamValidationError):
            validate_conf({"campaign_id": "c1", "subject": "Hello\r\nBcc: x@example.com"})

    @pytest.mark.parametrize(
        "from_email",
        ["a@example.com, b@example.com", "news@example.com,", "<news@example.com>", "news@example.com\n"],
    )
    def test_the_trigger_form_refuses_anything_but_one_plain_address(self, from_email):
        with pytest.raises(ParamValidationError, match="from_email"):
            validate_conf({"campaign_id": "c1", "from_email": from_email})

    def test_start_at_within_a_year_is_accepted(self):
        later = NOW + timedelta(days=365)
        settings = CampaignSettings.from_params(params(start_at=later.isoformat()), now=NOW)
        assert settings.start_at == later

    @pytest.mark.parametrize(
        "start_at",
        [
            "9999-12-31T23:59:59Z",
            "2028-01-01T00:00:00Z",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+01:00",
        ],
    )
    def test_start_at_far_ahead_or_out_of_range_names_the_param(self, start_at):
        with pytest.raises(CampaignSettingsError, match="start_at"):
            CampaignSettings.from_params(params(start_at=start_at), now=NOW)

    @pytest.mark.parametrize(
        "table",
        [
            "pg_catalog.pg_authid",
            "PG_CATALOG.pg_class",
            "information_schema.tables",
            "Information_Schema.columns",
            "pg_toast.pg_toast_2619",
            "pg_temp_3.t",
            "pg_authid",
            "sqlite_master",
            "main.sqlite_schema",
            "email_batch_ledger",
            "EMAIL_CAMPAIGN_RECIPIENTS",
            "public.email_suppressions",
            "email_events",
            "email_campaigns",
        ],
    )
    def test_recipients_table_refuses_system_and_own_tables(self, table):
        with pytest.raises(CampaignSettingsError, match="recipients_table"):
            CampaignSettings.from_params(params(recipients_table=table), now=NOW)

    def test_every_warehouse_table_constant_is_refused(self):
        from include import warehouse

        tables = [v for k, v in vars(warehouse).items() if k.endswith("_TABLE") and isinstance(v, str)]
        assert len(tables) >= 10
        for table in tables:
            with pytest.raises(CampaignSettingsError, match="recipients_table"):
                CampaignSettings.from_params(params(recipients_table=table.upper()), now=NOW)

    @pytest.mark.parametrize("table", ["recipients", "marketing.recipients", "pgusers", "email_list"])
    def test_ordinary_tables_are_accepted(self, table):
        assert CampaignSettings.from_params(params(recipients_table=table), now=NOW).recipients_table == table

    def test_a_far_logical_date_is_refused_as_the_empty_start_at(self):
        with pytest.raises(CampaignSettingsError, match=r"start_at .*empty: the run's logical date"):
            CampaignSettings.from_params(
                params(start_at=None), now=NOW, logical_date=datetime(9999, 12, 31, tzinfo=UTC)
            )

    def test_the_subject_may_hold_any_printable_text(self):
        subject = "Hé {{first_name}} 😀 — 50% off, «today»"
        assert CampaignSettings.from_params(params(subject=subject), now=NOW).subject == subject
        assert validate_conf({"campaign_id": "c1", "subject": subject})["subject"] == subject

    def test_bodies_keep_their_line_breaks(self):
        settings = CampaignSettings.from_params(
            params(html_body="<p>a</p>\r\n<p>b</p>", text_body="a\nb"), now=NOW
        )
        assert (settings.html_body, settings.text_body) == ("<p>a</p>\r\n<p>b</p>", "a\nb")

    @pytest.mark.parametrize("table", ["recipients", "marketing.recipients_2026", "email_list", "pgusers"])
    def test_the_trigger_form_accepts_an_ordinary_table(self, table):
        assert validate_conf({"campaign_id": "c1", "recipients_table": table})["recipients_table"] == table


class TestTheProjectsOwnTables:
    def test_every_table_the_schema_creates_is_refused_as_the_audience(self, warehouse):
        from include.warehouse import ensure_schema

        ensure_schema(warehouse)
        if warehouse.dialect_name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        else:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        tables = [row[0] for row in warehouse.get_records(sql)]

        assert len(tables) >= 10
        for table in tables:
            for name in (table, table.upper(), f"public.{table}"):
                with pytest.raises(CampaignSettingsError, match="recipients_table .* own tables"):
                    CampaignSettings.from_params(params(recipients_table=name), now=NOW)
                with pytest.raises(ParamValidationError, match="recipients_table"):
                    validate_conf({"campaign_id": "c1", "recipients_table": name})
