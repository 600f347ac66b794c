"""The warm-up ramp's Variable (``include.campaign.warmup``): what it means, and every malformed value
refused with its reason."""

from __future__ import annotations

import json
from datetime import date

import pytest

from include.campaign import warmup
from include.campaign.settings import CampaignSettings, CampaignSettingsError


class TestTheRamp:
    def test_each_day_from_start_then_the_plans_own_cap(self):
        ramp = warmup.parse(json.dumps({"start": "2026-12-07", "daily": [50, 100, 200]}))
        days = [date(2026, 12, d) for d in (6, 7, 8, 9, 10)]
        assert [ramp.limit(d) for d in days] == [50, 50, 100, 200, None]

    @pytest.mark.parametrize("raw", [None, "", "  "])
    def test_no_variable_is_no_ramp(self, raw):
        assert warmup.parse(raw) is None

    def test_the_variable_is_read_through_airflow(self, monkeypatch):
        monkeypatch.setenv("AIRFLOW_VAR_MIGOSMTP_WARMUP", '{"start": "2026-12-07", "daily": [5]}')
        assert warmup.from_airflow() == warmup.Ramp(date(2026, 12, 7), (5,))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("{not json", "is not JSON"),
        ("[50, 100]", 'exactly "start" and "daily"'),
        ('{"start": "2026-12-07"}', 'exactly "start" and "daily"'),
        ('{"start": "2026-12-07", "daily": [1], "extra": 1}', 'exactly "start" and "daily"'),
        ('{"start": "07/12/2026", "daily": [1]}', "not a date YYYY-MM-DD"),
        ('{"start": "2026-02-30", "daily": [1]}', "is not a date"),
        ('{"start": 20261207, "daily": [1]}', "not a date YYYY-MM-DD"),
        ('{"start": "2026-12-07", "daily": []}', "non-empty list"),
        ('{"start": "2026-12-07", "daily": "50"}', "non-empty list"),
        ('{"start": "2026-12-07", "daily": [50, 0]}', "daily limit 2 (0) is not a positive integer"),
        ('{"start": "2026-12-07", "daily": [50, 1.5]}', "daily limit 2 (1.5)"),
        ('{"start": "2026-12-07", "daily": [true]}', "daily limit 1 (True)"),
        ('{"start": "2026-12-07", "daily": [' + ",".join(["1"] * 400) + "]}", "at most 366"),
    ],
)
def test_a_malformed_variable_is_refused_with_its_reason(raw, says):
    with pytest.raises(warmup.WarmupError, match="migosmtp_warmup") as refused:
        warmup.parse(raw)
    assert says in str(refused.value)


class TestTheWindowAndCapParams:
    BASE = {
        "campaign_id": "c1",
        "recipients_table": "recipients",
        "from_email": "news@example.com",
        "subject": "s",
        "html_body": "<p>h</p>",
    }

    def test_defaults_are_no_window_utc_and_no_cap(self):
        settings = CampaignSettings.from_params(self.BASE)
        assert settings.window.always and settings.default_timezone == "UTC"
        assert (settings.max_mails_per_recipient, settings.frequency_days) == (0, 7)

    def test_a_window_and_a_zone(self):
        settings = CampaignSettings.from_params(
            {
                **self.BASE,
                "send_days": ["fri", "mon"],
                "send_hours": "09:30-17:00",
                "default_timezone": "Asia/Kolkata",
            }
        )
        assert (settings.send_days, settings.send_hours, settings.default_timezone) == (
            ["mon", "fri"],
            "09:30-17:00",
            "Asia/Kolkata",
        )

    @pytest.mark.parametrize(
        ("field", "value", "says"),
        [
            ("send_hours", "17:00-09:00", "send_hours '17:00-09:00' ends before it starts"),
            ("send_hours", "9 to 5", "not a local span such as 09:00-17:00"),
            ("send_days", ["mon", "funday"], "send_days holds 'funday', not a weekday"),
            ("send_days", "mon", "must be a non-empty list"),
            (
                "default_timezone",
                "Europe/Atlantis",
                "default_timezone 'Europe/Atlantis' is not an IANA time zone",
            ),
            ("default_timezone", "../../etc/passwd", "is not an IANA time zone"),
            ("max_mails_per_recipient", -1, "max_mails_per_recipient -1 is negative"),
            ("max_mails_per_recipient", 1.5, "is not an integer"),
            ("frequency_days", 0, "frequency_days 0 is not between 1 and 366"),
            ("frequency_days", 400, "frequency_days 400 is not between 1 and 366"),
        ],
    )
    def test_a_bad_value_is_refused_naming_it(self, field, value, says):
        with pytest.raises(CampaignSettingsError) as refused:
            CampaignSettings.from_params({**self.BASE, field: value})
        assert says in str(refused.value)
