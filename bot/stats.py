"""`zennbot stats`: what the answers cost (the model's own token counts, stored per run; a call
cut off mid-stream by a Stop, a timeout or shutdown counts under "<model> (estimated)") and what
people thought of them (👍/👎)."""

from __future__ import annotations

import json
from dataclasses import asdict

from bot.settings import Settings
from bot.store import Store, UsageRow, open_store


async def collect(store: Store) -> dict:
    feedback: dict[str, dict[str, int]] = {}
    for (platform, value), count in (await store.feedback_counts()).items():
        feedback.setdefault(platform, {"good": 0, "bad": 0})[value] = count
    return {
        "by_day": [asdict(r) for r in await store.usage_by("day")],
        "by_platform": [asdict(r) for r in await store.usage_by("platform")],
        "by_thread": [asdict(r) for r in await store.usage_by("thread_id")],
        "by_model": [asdict(r) for r in await store.usage_by("model")],
        "feedback": feedback,
    }


def format_stats(stats: dict) -> str:
    lines: list[str] = []
    for title, key, label in (("Tokens per day (UTC)", "by_day", "day"),
                              ("Tokens per platform", "by_platform", "platform"),
                              ("Threads that cost most", "by_thread", "thread"),
                              ("Tokens per model (“(estimated)”: calls cut off before the model reported them)",
                               "by_model", "model")):
        rows = [UsageRow(**r) for r in stats[key]]
        lines += [title, f"  {label:<40} {'runs':>6} {'input':>12} {'output':>10}"]
        lines += [f"  {r.key:<40} {r.runs:>6} {r.input_tokens:>12,} {r.output_tokens:>10,}" for r in rows]
        lines += ["  (none yet)"] if not rows else []
        lines.append("")
    lines.append("Feedback on answers")
    for platform, votes in sorted(stats["feedback"].items()):
        lines.append(f"  {platform:<10} 👍 {votes.get('good', 0)}  👎 {votes.get('bad', 0)}")
    if not stats["feedback"]:
        lines.append("  (none yet)")
    return "\n".join(lines)


async def print_stats(settings: Settings, as_json: bool = False) -> int:
    store = await open_store(settings)
    try:
        stats = await collect(store)
    finally:
        await store.close()
    print(json.dumps(stats, ensure_ascii=False) if as_json else format_stats(stats))
    return 0
