"""The naive way to plan a campaign, kept only as the benchmark's baseline.

What a data engineer writes first with pandas: load the whole recipients table
with ``pandas.read_sql``, screen and de-duplicate it vectorized, cut batches
against the caps, and write staging, rejections and ledger with ``to_sql``.
It is quick to write and fast on small lists, and its memory grows with the
list. Its tables are its own (``naive_*``), so it never touches a real plan.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pandas as pd

from include.campaign.audience import _EMAIL
from include.campaign.planner import BatchPacker, PlanCaps
from include.warehouse import quote_table, utc_text


def _variables(row: pd.Series, extra: list[str]) -> str:
    variables = {c: row[c] for c in extra if pd.notna(row[c])}
    if "variables" in row and pd.notna(row["variables"]):
        variables.update(json.loads(row["variables"]))
    return json.dumps(variables, sort_keys=True, default=str)


def plan_naive(engine, table: str, caps: PlanCaps, start_at: datetime) -> dict[str, int]:
    frame = pd.read_sql(f"SELECT * FROM {quote_table(table)} ORDER BY recipient_id, email", engine)
    frame["source_row"] = np.arange(1, len(frame) + 1)
    rid = frame["recipient_id"].astype("string").str.strip().str.replace(r"\.0$", "", regex=True)
    email = frame["email"].astype("string").str.strip().str.lower()
    valid = email.str.fullmatch(_EMAIL.pattern).fillna(False) & (email.str.len() <= 254)
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    reason[rid.isna() | (rid == "")] = "missing_recipient_id"
    reason[reason.isna() & (email.isna() | (email == ""))] = "missing_email"
    reason[reason.isna() & ~valid] = "invalid_email"
    reason[reason.isna() & rid.duplicated()] = "duplicate_recipient_id"
    reason[reason.isna() & email.where(reason.isna()).duplicated() & email.notna()] = "duplicate_email"

    accepted = frame[reason.isna()].copy()
    accepted["recipient_id"], accepted["email"] = rid[reason.isna()], email[reason.isna()]
    extra = [c for c in frame.columns if c not in ("recipient_id", "email", "variables", "source_row")]
    accepted["variables"] = accepted.apply(_variables, axis=1, extra=extra)
    packer = BatchPacker(caps, start_at)
    packer.take(len(accepted))
    packer.finish()
    batches = packer.batches
    accepted["batch_number"] = np.repeat(
        [b.batch_number for b in batches], [b.recipient_count for b in batches]
    )
    accepted["position"] = np.arange(1, len(accepted) + 1)
    accepted[["batch_number", "position", "recipient_id", "email", "variables"]].to_sql(
        "naive_staging", engine, if_exists="replace", index=False
    )
    rejected = frame[reason.notna()][["source_row", "recipient_id", "email"]].assign(
        reason=reason[reason.notna()]
    )
    rejected.astype({"recipient_id": "string"}).to_sql(
        "naive_rejected", engine, if_exists="replace", index=False
    )
    ids = accepted.groupby("batch_number")["recipient_id"].agg(lambda s: json.dumps(list(s)))
    pd.DataFrame(
        {
            "batch_number": [b.batch_number for b in batches],
            "recipient_ids": ids.to_numpy(),
            "recipient_count": [b.recipient_count for b in batches],
            "send_at": [utc_text(b.send_at) for b in batches],
            "status": "planned",
        }
    ).to_sql("naive_ledger", engine, if_exists="replace", index=False)
    return {"batches": len(batches), "staged": len(accepted), "rejected": int(reason.notna().sum())}
