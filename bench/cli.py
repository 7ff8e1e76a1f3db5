"""`zennbot bench …` (from a checkout): cost, speed and reading quality, printed as figures."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zennbot bench", description="Measure cost, speed and reading quality.")
    parser.add_argument("which", nargs="?", default="conversation",
                        choices=["conversation", "latency", "reads", "extraction", "load"],
                        help="conversation: cost of the prototype's 7 turns; latency: time to the first word; "
                             "reads: page reads beside a bare browser; extraction: the page reader on 250 real "
                             "pages beside trafilatura; load: a burst of simultaneous questions through Slack")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pages", type=int, default=20, help="reads: corpus pages to read")
    parser.add_argument("--rounds", type=int, default=3, help="reads: rounds over the local pages")
    parser.add_argument("--dead-host-delay", type=float, default=3.0,
                        help="reads: seconds before a host other than 127.0.0.1 fails")
    parser.add_argument("--n", type=int, default=None, help="extraction: only the first N pages")
    parser.add_argument("--start", type=int, default=0, help="extraction: start at page START")
    parser.add_argument("--cmd", default=None,
                        help="extraction: read each page with this command instead of in-process, "
                             "e.g. '.venv/bin/zennbot read {url}' (pages served on 127.0.0.1)")
    parser.add_argument("--jobs", type=int, default=2, help="extraction with --cmd: pages read at once")
    parser.add_argument("--questions", type=int, default=30, help="load: simultaneous questions")
    parser.add_argument("--cached", action="store_true", help="load: the pages were read before the burst")
    parser.add_argument("--model-delay", type=float, default=1.0, help="load: seconds the model takes per call")
    parser.add_argument("--stream-seconds", type=float, default=2.0, help="load: seconds the model writes an answer")
    parser.add_argument("--browser-idle", type=float, default=10.0,
                        help="load: the bot's ZENNBOT_BROWSER_IDLE, and how long memory is watched after the burst")
    parser.add_argument("--renders", type=int, default=0, help="load: the bot's ZENNBOT_MAX_RENDERS (0: its default)")
    args = parser.parse_args(argv)
    if args.which == "load":
        from bench.load import main as load_main

        return load_main(as_json=args.json, questions=args.questions, cached=args.cached,
                         model_delay=args.model_delay, stream_seconds=args.stream_seconds,
                         browser_idle=args.browser_idle, renders=args.renders)
    if args.which == "extraction":
        from bench.extraction import main as extraction_main

        return extraction_main(as_json=args.json, n=args.n, start=args.start, cmd=args.cmd, jobs=args.jobs)
    if args.which == "reads":
        from bench.reads import main as reads_main

        return reads_main(as_json=args.json, corpus_pages=args.pages, rounds=args.rounds,
                          dead_host_delay=args.dead_host_delay)
    if args.which == "latency":
        from bench.latency import main as latency_main

        return latency_main(as_json=args.json)
    from bench.conversation import main as conversation_main

    return conversation_main(as_json=args.json)
