"""`zennbot bench load`: a burst of simultaneous questions through the real Slack adapter, as an
operator would measure it before a launch.

The bot runs as in production, in a process of its own (`python -m bot run`: Slack HTTP mode,
SQLite, the default limits), against local fakes: the mock Slack Web API (`bench.slack_api`),
the Gemini stub (`bench.gemini_stub`: `--model-delay` s before each call answers, the answer
streamed over `--stream-seconds`) and the Zenn replica serving a page that scripts draw after a
fetch (so each uncached read goes through Chromium), one URL per question. Each question is a
signed `app_mention` in a thread of its own; the model reads the page, then answers.

Measured, on one clock (the mock's records and the bench's own):
- one question alone (after a warm-up question that starts the browser);
- the burst: time from the question to the first answer text in the thread and to the complete
  answer (the message with its feedback buttons); an answer "streamed" when its first text came
  at least 1 s before its final form;
- peak PSS (`/proc/*/smaps_rollup`) of the bot's process and its children during the burst,
  and its Chromium processes; the same after the browser's idle time (`--browser-idle`);
- a bare Playwright script reading the same pages with as many renders at once as the bot.
With `--cached` the burst's pages were read before (by an unmeasured burst of other threads).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from langchain_core.messages import AIMessage, ToolMessage
from playwright.async_api import async_playwright

from agent.browser import LAUNCH_ARGS, find_chromium
from agent.limits import cpu_count
from agent.proxy import GuardProxy
from agent.urlguard import UrlPolicy
from bench.gemini_stub import GeminiStub
from bench.reads import _p95, bench_routes
from bench.replica import ReplicaOptions, ReplicaServer
from bench.scripted_model import current_turn, tool_call
from bench.slack_api import BOT_USER, TEAM, MockSlackApi, event_body, signed_headers

CHECKOUT = Path(__file__).resolve().parents[1]
SECRET = "bench-signing-secret"
CHANNEL = "C1"
WARM_UP_TEAM = "TWARMUP"  # the workspace of the cache warm-up's questions
PAGE_MARK = "Drawn paragraph 11"  # the drawn page's last paragraph: the page was read whole
ANSWER_CHUNK = 12  # characters per streamed chunk
ANSWER = ("ページを読みました。この記事はブラウザがスクリプトで本文を描くページで、最後の段落まで読めています。"
          "要点は三つあります。まず本文は取得した JSON から描かれること、次に読み込み中の表示がないこと、"
          "最後に一覧ではなく一つの記事であることです。") * 2
STREAMED_LEAD = 1.0  # s: an answer streamed when its first text came this long before its final form
SAMPLE_EVERY = 0.25  # s between memory samples (reading smaps_rollup of every process costs CPU the bot needs)
ANSWER_DEADLINE = 600.0  # s one question may take in the benchmark before it counts as lost


@dataclass
class Answer:
    """One question's path through the Slack thread, in `time.monotonic()` seconds."""

    thread_ts: str
    asked_at: float
    first_text_at: float | None = None
    complete_at: float | None = None
    failed: bool = False
    text: str = ""
    scanned: int = 0  # the mock's calls looked at so far (each poll looks only at the new ones)

    @property
    def to_first_text(self) -> float | None:
        return None if self.first_text_at is None else self.first_text_at - self.asked_at

    @property
    def to_complete(self) -> float | None:
        return None if self.complete_at is None else self.complete_at - self.asked_at

    @property
    def streamed(self) -> bool:
        return (self.first_text_at is not None and self.complete_at is not None
                and self.complete_at - self.first_text_at >= STREAMED_LEAD)


@dataclass
class MemorySample:
    pss_mb: float
    chromium: int
    processes: int


@dataclass
class MemoryWatch:
    """Samples the bot's process tree every `SAMPLE_EVERY` s while it runs."""

    pid: int
    samples: list[MemorySample] = field(default_factory=list)

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append(await asyncio.to_thread(process_tree_memory, self.pid))
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
            except TimeoutError:
                pass

    @property
    def peak(self) -> MemorySample:
        return max(self.samples, key=lambda s: s.pss_mb)


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) `pid` itself has used so far (its Chromium children not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_memory(root: int) -> MemorySample:
    """The summed PSS of `root` and its descendants, and how many of them are Chromium."""
    pss_kb, chromium, count = 0, 0, 0
    for pid in process_tree(root):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue  # it ended meanwhile
        match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        pss_kb += int(match[1]) if match else 0
        count += 1
        chromium += "chrom" in os.path.basename(command.decode(errors="replace"))
    return MemorySample(round(pss_kb / 1024, 1), chromium, count)


def answering_policy(messages):
    """Read the page the question names, then answer (saying whether the page was read whole)."""
    _, human, since = current_turn(messages)
    results = [m for m in since if isinstance(m, ToolMessage)]
    if not results:
        url = re.search(r"https?://\S+", str(human.content))[0]
        return tool_call("read_page", url=url)
    read = PAGE_MARK in str(results[-1].content)
    return AIMessage(content=ANSWER if read else "The page was not read: " + str(results[-1].content)[:200])


class BotProcess:
    """`python -m bot run` with the given environment; its log goes to `log_path`."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / "bot.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    async def start(self, deadline: float = 60.0) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "bot", "run"], cwd=self.workdir, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            match = re.search(r"Slack: listening on port (\d+)", self.log_path.read_text(errors="replace"))
            if match:
                self.port = int(match[1])
                return
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        raise RuntimeError("the bot did not start; its log:\n" + self.log_path.read_text(errors="replace")[-3000:])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, 20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait, 5)


def bot_env(workdir: Path, slack: str, gemini: str, browser_idle: float, renders: int) -> dict[str, str]:
    """The bot's environment: the bench's fakes, a database of its own, default limits. The
    pages are any site's, not Zenn's (`ZENN_BASE_URL` stays zenn.dev, never contacted): Zenn's
    own pages are read one paced request at a time, which would measure that pacing instead."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ZENNBOT_", "SLACK_", "DISCORD_", "GOOGLE_", "BROWSER_", "ZENN_"))}
    env |= {"PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])),
            "SLACK_BOT_TOKEN": "xoxb-bench", "SLACK_SIGNING_SECRET": SECRET, "SLACK_PORT": "0",
            "SLACK_API_URL": slack + "/api/", "GOOGLE_API_KEY": "bench", "GOOGLE_GEMINI_BASE_URL": gemini,
            "ZENNBOT_DB": str(workdir / "bench.db"), "ZENNBOT_LOG_LEVEL": "INFO",
            "ZENNBOT_ALLOW_PRIVATE_NETWORK": "true",  # the replica is on 127.0.0.1
            "ZENNBOT_USER_RATE_LIMIT": "100000", "ZENNBOT_THREAD_RATE_LIMIT": "100000",
            "ZENNBOT_BROWSER_IDLE": str(browser_idle)}
    if renders:
        env["ZENNBOT_MAX_RENDERS"] = str(renders)
    return env


class Asker:
    """Mentions the bot in new threads of `CHANNEL` and follows each answer in the mock."""

    def __init__(self, http: aiohttp.ClientSession, slack: MockSlackApi, port: int) -> None:
        self.http = http
        self.slack = slack
        self.url = f"http://127.0.0.1:{port}/slack/events"
        self._n = 0

    async def ask(self, question: str, team: str = TEAM) -> Answer:
        """`team`: the workspace asking (its answers share one stream budget)."""
        self._n += 1
        ts = f"1800000000.{self._n:06d}"
        event = {"type": "app_mention", "user": f"U{self._n:05d}", "text": f"<@{BOT_USER}> {question}", "ts": ts,
                 "channel": CHANNEL, "event_ts": ts}
        body = event_body(event, f"Ev{self._n:06d}", team)
        answer = Answer(ts, time.monotonic())
        async with self.http.post(self.url, data=body,
                                  headers=signed_headers(SECRET, body, "application/json")) as response:
            if response.status != 200:
                raise RuntimeError(f"the bot answered the event with HTTP {response.status}")
        end = time.monotonic() + ANSWER_DEADLINE
        while not self._follow(answer):
            if time.monotonic() > end:
                break
            await asyncio.sleep(0.05)
        return answer

    def _follow(self, answer: Answer) -> bool:
        """Fill in the answer's times from the mock's new calls; True once it is complete (or
        failed). Incremental, so that 30 askers polling cost the machine (and the bot's browser)
        next to nothing."""
        calls, times = self.slack.calls, self.slack.call_times
        end = min(len(calls), len(times))
        for (method, args), at in zip(calls[answer.scanned:end], times[answer.scanned:end], strict=True):
            if method == "reactions.add" and args.get("name") == "warning" and args.get("timestamp") == answer.thread_ts:
                answer.failed = True
            thread = args.get("thread_ts") or self.slack.stream_threads.get(args.get("ts", ""))
            if thread != answer.thread_ts or not method.startswith("chat.") or answer.complete_at is not None:
                continue
            has_text = bool(args.get("markdown_text") or args.get("text") or args.get("blocks")
                            or any(c.get("text") for c in args.get("chunks") or []))
            if answer.first_text_at is None and has_text and method in (
                    "chat.startStream", "chat.appendStream", "chat.postMessage", "chat.update"):
                answer.first_text_at = at
            if any(b.get("type") == "context_actions" for b in args.get("blocks") or []):
                answer.complete_at = at
        answer.scanned = end
        if answer.complete_at is not None:
            answer.text = self.slack.thread_text(CHANNEL, answer.thread_ts)
        return answer.complete_at is not None or answer.failed


async def bare_reference(urls: list[str], renders: int, timeout: float = 20.0) -> float:
    """Seconds a bare Playwright script takes for `urls`: one Chromium, `renders` contexts at a
    time, each `goto` then wait for the drawn article (through a guard proxy, as the bot's reads)."""
    proxy = GuardProxy(UrlPolicy(allow_private_network=True))
    await proxy.start()
    slots = asyncio.Semaphore(renders)
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=find_chromium(), headless=True, chromium_sandbox=False, args=LAUNCH_ARGS,
                proxy={"server": proxy.url, "bypass": "<-loopback>", "username": proxy.username,
                       "password": proxy.password})

            async def read(url: str) -> str:
                async with slots:
                    context = await browser.new_context()
                    try:
                        page = await context.new_page()
                        await page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
                        await page.wait_for_selector("article p", timeout=timeout * 1000)
                        return await page.content()
                    finally:
                        await context.close()

            await read(urls[0] + "&warm-up")
            started = time.monotonic()
            pages = await asyncio.gather(*(read(url) for url in urls))
            elapsed = time.monotonic() - started
            await browser.close()
    finally:
        await proxy.close()
    if not all(PAGE_MARK in html for html in pages):
        raise RuntimeError("the bare script did not see the drawn text")
    return elapsed


def _warnings(log_path: Path, limit: int = 40) -> str:
    """The bot log's warnings and errors (the last `limit` of them)."""
    lines = [line for line in log_path.read_text(errors="replace").splitlines()
             if " WARNING " in line or " ERROR " in line]
    return "the bot's warnings:\n" + "\n".join(lines[-limit:])


def model_seconds(calls) -> float:
    """Seconds the model took over these stub calls (from the request to its last chunk)."""
    return sum((call.sent_at[-1] if call.sent_at else call.received_at) - call.received_at for call in calls)


async def run_load(questions: int = 30, cached: bool = False, model_delay: float = 1.0,
                   stream_seconds: float = 2.0, browser_idle: float = 10.0, renders: int = 0) -> dict:
    render_slots = renders or cpu_count()
    chunks = max(2, len(range(0, len(ANSWER), ANSWER_CHUNK)))
    async with ReplicaServer(ReplicaOptions(extra_routes=bench_routes())) as site, MockSlackApi() as slack, \
            GeminiStub(policy=answering_policy, chunk_chars=ANSWER_CHUNK, chunk_delay=stream_seconds / (chunks - 1),
                       call_delay=model_delay) as gemini:
        page = site.url + "/bench/drawn?page="
        burst_urls = [f"{page}burst-{n}" for n in range(questions)]
        with tempfile.TemporaryDirectory(prefix="zennbot-load-") as tmp:
            bot = BotProcess(bot_env(Path(tmp), slack.url, gemini.url, browser_idle, renders), Path(tmp))
            await bot.start()
            try:
                async with aiohttp.ClientSession() as http:
                    asker = Asker(http, slack, bot.port)
                    await _expect_answered([await asker.ask(f"{page}warm-up この記事の要点は？")], "warm-up")
                    if cached:  # the pages read once, by other threads (of another workspace: the
                        # burst's workspace starts with its stream budget whole, as after a quiet minute)
                        await _expect_answered(await asyncio.gather(*(asker.ask(f"{url} この記事の要点は？", WARM_UP_TEAM)
                                                                      for url in burst_urls)), "cache warm-up")
                    before = len(gemini.calls)
                    alone_url = burst_urls[0] if cached else f"{page}alone"
                    alone = await asker.ask(f"{alone_url} この記事の要点は？")
                    await _expect_answered([alone], "the single question")
                    alone_model = model_seconds(gemini.calls[before:])
                    idle_before = process_tree_memory(bot.pid)
                    cpu_before = process_cpu_seconds(bot.pid)
                    bench_cpu_before = process_cpu_seconds(os.getpid())
                    stop = asyncio.Event()
                    memory = MemoryWatch(bot.pid)
                    watcher = asyncio.create_task(memory.watch(stop))
                    started = time.monotonic()
                    answers = await asyncio.gather(*(asker.ask(f"{url} この記事の要点は？") for url in burst_urls))
                    wall = time.monotonic() - started
                    bot_cpu = process_cpu_seconds(bot.pid) - cpu_before
                    bench_cpu = process_cpu_seconds(os.getpid()) - bench_cpu_before
                    stop.set()
                    await watcher
                    await asyncio.sleep(browser_idle + 3.0)
                    after_idle = process_tree_memory(bot.pid)
            except RuntimeError:  # a question went unanswered: what the bot logged says why
                print(_warnings(bot.log_path), file=sys.stderr)
                raise
            finally:
                await bot.stop()
        stream_calls = _stream_call_counts(slack)
        bare = await bare_reference(burst_urls, render_slots)  # the bot has stopped: the machine is its
    done = [a for a in answers if a.complete_at is not None and ANSWER[:40] in a.text]
    first = [a.to_first_text for a in done if a.to_first_text is not None]
    complete = [a.to_complete for a in done]
    peak = memory.peak
    phases = _phases(answers, burst_urls, gemini.calls)
    result = {
        "questions": questions, "cached": cached, "model_delay_s": model_delay, "stream_s": stream_seconds,
        "renders": render_slots, "browser_idle_s": browser_idle,
        "alone_s": round(alone.to_complete or 0.0, 2), "alone_model_s": round(alone_model, 2),
        "answered": len(done), "burst_wall_s": round(wall, 2),
        "first_text_p50_s": _round(statistics.median(first) if first else None),
        "first_text_p95_s": _round(_p95(first) if first else None),
        "complete_p50_s": _round(statistics.median(complete) if complete else None),
        "complete_p95_s": _round(_p95(complete) if complete else None),
        "streamed": sum(a.streamed for a in answers),
        "peak_pss_mb": peak.pss_mb, "peak_chromium_processes": max(s.chromium for s in memory.samples),
        "peak_processes": max(s.processes for s in memory.samples),
        "before_burst_pss_mb": idle_before.pss_mb, "before_burst_chromium": idle_before.chromium,
        "after_idle_pss_mb": after_idle.pss_mb, "after_idle_chromium": after_idle.chromium,
        "bare_playwright_s": round(bare, 2),
        "bot_process_cpu_s": round(bot_cpu, 2),
        "bench_process_cpu_s": round(bench_cpu, 2),  # the fakes, the replica and the askers
        "stream_calls": stream_calls,
        "phases_p50_s": phases,
    }
    result["target_complete_p95_s"] = round(2 * result["alone_s"] if cached else bare + 2 * alone_model, 2)
    result["targets_met"] = {
        "complete_p95": result["complete_p95_s"] is not None
        and result["complete_p95_s"] <= result["target_complete_p95_s"],
        "streamed": result["streamed"] >= 0.9 * questions,
        "peak_pss": peak.pss_mb <= 700,
        "memory_back": after_idle.chromium == 0,
    }
    return result


def _phases(answers: list[Answer], urls: list[str], calls) -> dict:
    """Where a burst answer's time goes (medians): question → first model call arrives; first
    call's answer → the answering call arrives (the page read and the bot's work); the model's
    last chunk → the complete answer in Slack (the bot and Slack's pace)."""
    to_model, between, to_slack = [], [], []
    for answer, url in zip(answers, urls, strict=True):
        mine = [c for c in calls if c.received_at >= answer.asked_at
                and url + " " in json.dumps(c.body.get("contents", [])[:1], ensure_ascii=False)]
        if len(mine) < 2 or answer.complete_at is None:
            continue
        first, last = mine[0], mine[-1]
        to_model.append(first.received_at - answer.asked_at)
        between.append(last.received_at - (first.sent_at[-1] if first.sent_at else first.received_at))
        to_slack.append(answer.complete_at - last.sent_at[-1])
    median = lambda values: _round(statistics.median(values)) if values else None  # noqa: E731
    return {"question_to_model": median(to_model), "tool_call_to_answer_call": median(between),
            "last_chunk_to_complete": median(to_slack)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


async def _expect_answered(answers: list[Answer], what: str) -> None:
    for answer in answers:
        if answer.complete_at is None or ANSWER[:40] not in answer.text:
            raise RuntimeError(f"{what}: no complete answer in thread {answer.thread_ts}: {answer.text[:300]!r}")


def _stream_call_counts(slack: MockSlackApi) -> dict:
    """Slack calls per method, and the most of each in any 60 s (Slack counts per method,
    workspace and minute)."""
    times: dict[str, list[float]] = {}
    for (method, _), at in zip(slack.calls, slack.call_times, strict=True):
        times.setdefault(method, []).append(at)
    out = {}
    for method, ats in sorted(times.items()):
        most = max(sum(1 for b in ats if a <= b < a + 60) for a in ats)
        out[method] = {"calls": len(ats), "most_in_60s": most}
    return out


def format_load(r: dict) -> str:
    met = r["targets_met"]
    mark = {True: "ok", False: "MISSED"}
    return "\n".join([
        f"load: {r['questions']} simultaneous questions on {'cached' if r['cached'] else 'uncached'} pages "
        f"(Slack HTTP mode; model {r['model_delay_s']:g} s per call, answer streamed over {r['stream_s']:g} s; "
        f"{r['renders']} renders at once)",
        f"  one question alone: {r['alone_s']:.2f} s (model {r['alone_model_s']:.2f} s)",
        f"  answered: {r['answered']}/{r['questions']}; burst wall {r['burst_wall_s']:.2f} s",
        f"  first text:      p50 {r['first_text_p50_s']} s, p95 {r['first_text_p95_s']} s",
        f"  complete answer: p50 {r['complete_p50_s']} s, p95 {r['complete_p95_s']} s "
        f"(target ≤ {r['target_complete_p95_s']:.2f} s: {mark[met['complete_p95']]})",
        f"  streamed (first text ≥ {STREAMED_LEAD:g} s before the final form): {r['streamed']}/{r['questions']} "
        f"({mark[met['streamed']]})",
        f"  memory: peak PSS {r['peak_pss_mb']:.0f} MB ({mark[met['peak_pss']]}, target ≤ 700), "
        f"{r['peak_chromium_processes']} Chromium processes at most; before the burst {r['before_burst_pss_mb']:.0f} MB; "
        f"after {r['browser_idle_s']:g} s idle {r['after_idle_pss_mb']:.0f} MB with {r['after_idle_chromium']} Chromium "
        f"processes ({mark[met['memory_back']]})",
        f"  bare Playwright, same {r['questions']} pages, {r['renders']} at once: {r['bare_playwright_s']:.2f} s",
        f"  where the time goes (medians): {r['phases_p50_s']}; the bot's own process used "
        f"{r['bot_process_cpu_s']} s of CPU during the burst ({r['burst_wall_s']} s), the bench's (fakes, replica) "
        f"{r['bench_process_cpu_s']} s",
        "  Slack calls (most in any 60 s): " + ", ".join(f"{m} {c['calls']} ({c['most_in_60s']})"
                                                         for m, c in r["stream_calls"].items()),
    ])


def main(as_json: bool = False, questions: int = 30, cached: bool = False, model_delay: float = 1.0,
         stream_seconds: float = 2.0, browser_idle: float = 10.0, renders: int = 0) -> int:
    result = asyncio.run(run_load(questions, cached, model_delay, stream_seconds, browser_idle, renders))
    print(json.dumps(result) if as_json else format_load(result))
    return 0 if all(result["targets_met"].values()) else 1
