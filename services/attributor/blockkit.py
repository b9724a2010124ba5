"""Slack Block Kit messages for alert notifications, kept inside Slack's limits.

A message has a header, one section of fields per alert (scope, rate against budget or baseline, since when, state),
the group's top model and agent, a link to the scope's console page, and a plain ``text`` fallback (what
notifications and clients without blocks show). Limits that Slack enforces by refusing the message
(``invalid_blocks``): at most 50 blocks, header text 150 characters, section text 3,000, a field 2,000 and 10 fields
per section; so alerts beyond what fits are counted in a last line instead of shown, and every text is cut to its
limit. User-supplied names (tenants, features, agents, models) are escaped for mrkdwn (``&``, ``<``, ``>``), so a
tenant named ``<!channel>`` cannot ping a channel or forge a link.

Amounts are shown in dollars truncated to the cent, from the integer micro-dollars of ``alert_state``
(``dollars``), the same numbers the webhook and the API carry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .detector import scope_name

if TYPE_CHECKING:
    from .notify import Notification, NotifiedAlert

MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION_TEXT = 3000
MAX_FIELD_TEXT = 2000
MAX_FIELDS = 10
#: The fallback ``text``: Slack cuts messages past 40,000 characters and advises far shorter; a section's limit here.
MAX_TEXT = 3000
#: Blocks besides the alerts' own: header, top model/agent, link, the "more alerts" line.
_FIXED_BLOCKS = 4
_BLOCKS_PER_ALERT = 2


def dollars(micros: int) -> str:
    """Micro-dollars as dollars truncated to the cent: ``12_345_678`` → ``$12.34``."""
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    return f"{sign}${micros // 1_000_000:,}.{micros % 1_000_000 // 10_000:02d}"


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: the three characters that control formatting."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(us: int) -> str:
    """A Slack date token (shown in the reader's time zone) with a UTC fallback."""
    seconds = us // 1_000_000
    utc = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"<!date^{seconds}^{{date_short_pretty}} {{time_secs}}|{utc}>"


def rate_text(a: NotifiedAlert) -> str:
    rate = f"{dollars(a.rate_micros_per_hour)}/h over {a.window_s} s ({a.window_requests:,} calls)"
    if a.reason == "budget":
        against = f"budget {dollars(a.budget_micros_per_hour)}/h"
    else:
        against = (
            f"baseline {dollars(a.baseline_micros_per_hour)}/h, spike above {dollars(a.threshold_micros_per_hour)}/h"
        )
    if a.threshold_micros_per_hour > 0 and a.state == "firing":
        against += f", {a.rate_micros_per_hour / a.threshold_micros_per_hour:.1f}×"
    return f"{rate}; {against}"


def _title(n: Notification) -> str:
    first = n.alerts[0]
    group = n.group
    scope = scope_name((group.get("tenant", first.tenant), group.get("feature", ""), group.get("agent", "")))
    if n.status == "resolved":
        return f"✅ Resolved: AI spend of {scope} is back to normal"
    lead = "Still runaway" if n.kind == "repeat" else "Runaway AI spend"
    more = f" ({n.firing} alerts)" if n.firing > 1 else ""
    return f"🚨 {lead}: {scope}{more}"


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": cut(f"*{label}*\n{value}", MAX_FIELD_TEXT)}


def _alert_blocks(a: NotifiedAlert) -> list[dict]:
    state = "FIRING" if a.state == "firing" else "RESOLVED"
    fields = [
        _field("Scope", escape(scope_name((a.tenant, a.feature, a.agent)))),
        _field("Rate", escape(rate_text(a))),
        _field("Since", _when(a.started_at_us)),
        _field("State", f"{state} ({'over budget' if a.reason == 'budget' else 'spike over baseline'})"),
    ]
    if a.resolved_at_us:
        fields.append(_field("Resolved", _when(a.resolved_at_us)))
    context = f"alert `{a.alert_id}` · fingerprint `{a.fingerprint}`"
    return [
        {"type": "section", "fields": fields[:MAX_FIELDS]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(context, MAX_SECTION_TEXT)}]},
    ]


def fallback_text(n: Notification) -> str:
    """The plain-text version: what a notification banner shows, and the whole message where blocks are not."""
    parts = [f"[{n.status.upper()}:{n.firing or n.resolved}] {_title(n)}"]
    for a in n.alerts:
        parts.append(f"{scope_name((a.tenant, a.feature, a.agent))}: {a.state}, {rate_text(a)}")
    if n.top_model or n.top_agent:
        parts.append(f"top model {n.top_model or '-'}, top agent {n.top_agent or '-'}")
    if n.console_url:
        parts.append(n.console_url)
    return cut(escape(" · ".join(parts)), MAX_TEXT)


def message(n: Notification) -> dict[str, object]:
    """The webhook payload: ``text`` plus ``blocks``, never past Slack's limits."""
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": cut(_title(n), MAX_HEADER), "emoji": True}}
    ]
    room = (MAX_BLOCKS - _FIXED_BLOCKS) // _BLOCKS_PER_ALERT
    for a in n.alerts[:room]:
        blocks += _alert_blocks(a)
    top = [_field("Top model", escape(n.top_model or "-")), _field("Top agent", escape(n.top_agent or "-"))]
    blocks.append({"type": "section", "fields": top})
    if n.console_url:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": cut(f"<{n.console_url}|Open the scope in the costmesh console>", MAX_SECTION_TEXT),
                },
            }
        )
    if len(n.alerts) > room:
        rest = len(n.alerts) - room
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"…and {rest} more alerts (see the console)"}]}
        )
    return {"text": fallback_text(n), "blocks": blocks}


def text_only(body: dict[str, object]) -> dict[str, object]:
    """The same message without blocks: what is sent when Slack refuses the blocks (``invalid_blocks``)."""
    return {"text": body["text"]}
