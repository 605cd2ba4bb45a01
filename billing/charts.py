"""Server-rendered SVG bar charts for the billing admin (no JavaScript, no CDN).

``daily_bar_chart`` turns a month of daily usage rows into the geometry that the
template ``admin/billing/usage_chart.html`` draws: one bar per calendar day of the
month (zero-height on days without usage), a y axis in currency, x labels every few
days. Coordinates are SVG user units in a ``viewBox`` of ``WIDTH`` x ``HEIGHT``; the
SVG scales to its container's width.
"""

from datetime import date, timedelta

from billing.formatting import counted, format_cents

WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 8, 12, 28  # margins around the plot area


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 2.5, 5 x 10^n that is >= ``value`` (>= 1)."""
    if value <= 1:
        return 1
    magnitude = 1
    while magnitude * 10 < value:
        magnitude *= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return int(step * magnitude)
    return 10 * magnitude


def daily_bar_chart(rows: list[dict], *, month: date, label: str) -> dict:
    """The chart of ``rows`` (``[{"day": date, "count": int, "cost_cents": int, ...}]``,
    e.g. ``billing.selectors.usage_by_day``) over every day of ``month`` (its first day).

    Bar height is the day's amount in cents; a day with events but a zero amount still
    shows a one-unit bar, so free usage is visible.

    Returns:
        ``{"width", "height", "label": str, "bars": [{"x", "y", "width", "height",
        "day": "YYYY-MM-DD", "cents": int, "count": int, "title": str}], "ticks":
        [{"y", "label"}], "x_labels": [{"x", "label"}], "plot": {"left", "right",
        "top", "bottom"}, "days_with_usage": int, "total_cents": int}`` (numbers in SVG
        units).
    """
    by_day = {row["day"]: row for row in rows}
    days = []
    day = month
    while day.month == month.month:
        days.append(day)
        day += timedelta(days=1)
    top = _nice_ceiling(max((row["cost_cents"] for row in rows), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(days)
    bars, x_labels = [], []
    for index, day in enumerate(days):
        row = by_day.get(day, {})
        cents, count = row.get("cost_cents", 0), row.get("count", 0)
        height = plot_h * cents / top if cents else (1 if count else 0)
        x = LEFT + index * slot
        bars.append(
            {
                "x": round(x + slot * 0.15, 2),
                "y": round(TOP + plot_h - height, 2),
                "width": round(slot * 0.7, 2),
                "height": round(height, 2),
                "day": day.isoformat(),
                "cents": cents,
                "count": count,
                "title": f"{day:%b} {day.day}: {counted(count, 'event')}, {format_cents(cents)}",
            }
        )
        if index % 5 == 0 or index == len(days) - 1:
            x_labels.append({"x": round(x + slot / 2, 2), "label": str(day.day)})
    ticks = [
        {"y": round(TOP + plot_h - plot_h * share, 2), "label": format_cents(round(top * share))}
        for share in ((0, 0.5, 1) if top >= 2 else (0, 1))
    ]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "label": label,
        "bars": bars,
        "ticks": ticks,
        "x_labels": x_labels,
        "plot": {"left": LEFT, "right": WIDTH - RIGHT, "top": TOP, "bottom": TOP + plot_h},
        "days_with_usage": sum(1 for bar in bars if bar["count"]),
        "total_cents": sum(bar["cents"] for bar in bars),
    }
