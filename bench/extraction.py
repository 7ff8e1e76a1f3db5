"""`zennbot bench extraction`: how clean and complete the page reader is on 250 real pages.

The pages are trafilatura's own evaluation corpus (`fixtures/extraction/`, see its README): per
page, snippets the main content must contain and boilerplate it must not. The scoring is
trafilatura's: whitespace-normalised substring matching over everything the reader prints;
precision, recall and F1 over all snippets of all pages, for zennbot's reader and for
`trafilatura.extract()` with its defaults on the same pages in the same run.

By default zennbot's reader runs in-process: each page's HTML, decoded as UTF-8 (as the
browser decodes it when the server says so), goes through `agent.extract.extract` and is laid
out as the page view the agent reads. With `cmd`, each page is instead served on 127.0.0.1 and
read by that command (e.g. `.venv/bin/zennbot read {url}`, through the real browser), every
part of it ("Part i of N").
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trafilatura

from agent.extract import extract, page_view

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "extraction"
_MAX_PARTS = 20


@dataclass(frozen=True)
class Case:
    file: str
    url: str  # where the corpus took the page from (or its name for it)
    must: list[str]  # snippets of main content
    must_not: list[str]  # snippets of boilerplate


@dataclass(frozen=True)
class Counts:
    found: int  # `must` snippets in the output (true positives)
    unwanted: int  # `must_not` snippets in the output (false positives)
    missed: int  # `must` snippets not in the output (false negatives)


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float
    pages: int

    @classmethod
    def of(cls, rows: list[Counts]) -> Score:
        tp = sum(r.found for r in rows)
        fp = sum(r.unwanted for r in rows)
        fn = sum(r.missed for r in rows)
        return cls(precision=round(tp / (tp + fp), 3) if tp + fp else 0.0,
                   recall=round(tp / (tp + fn), 3) if tp + fn else 0.0,
                   f1=round(2 * tp / (2 * tp + fp + fn), 3) if tp else 0.0, pages=len(rows))


@dataclass(frozen=True)
class Report:
    reader: str  # "in-process" or the command
    zennbot: Score
    trafilatura: Score
    empty_outputs: int
    worst: list[dict]  # the pages with the most misses and unwanted snippets

    @property
    def at_least_trafilatura(self) -> bool:
        return (self.zennbot.precision >= self.trafilatura.precision
                and self.zennbot.recall >= self.trafilatura.recall)


def load_cases(n: int | None = None, start: int = 0) -> list[Case]:
    """Cases `start` … `start + n - 1` of the corpus, in its order. Raises FileNotFoundError
    when the fixtures are missing."""
    raw = json.loads((FIXTURES / "cases.json").read_text("utf-8"))
    chosen = raw[start:] if n is None else raw[start:start + n]
    return [Case(file=c["file"], url=c["url"], must=c["with"], must_not=c["without"]) for c in chosen]


def page_bytes(case: Case) -> bytes:
    return gzip.decompress((FIXTURES / "pages" / f"{case.file}.gz").read_bytes())


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def counts(case: Case, output: str) -> Counts:
    text = normalise(output)
    found = sum(1 for s in case.must if normalise(s) in text)
    unwanted = sum(1 for s in case.must_not if normalise(s) in text)
    return Counts(found=found, unwanted=unwanted, missed=len(case.must) - found)


def read_in_process(case: Case, base_url: str = "http://127.0.0.1/") -> str:
    """The page view zennbot's reader gives for the page's HTML (no browser)."""
    url = base_url + case.file
    return page_view(extract(page_bytes(case).decode("utf-8", "replace"), url), url)


def read_with_trafilatura(case: Case) -> str:
    return trafilatura.extract(page_bytes(case)) or ""


def read_with_command(cmd: str, cases: list[Case], jobs: int = 2, timeout: float = 90,
                      env: dict[str, str] | None = None) -> list[str]:
    """Every part of each page as `cmd` (with `{url}`) prints it, the pages served on 127.0.0.1."""
    pages = {case.file: page_bytes(case) for case in cases}
    server = _serve(pages)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    full_env = {**os.environ, **(env or {})}
    try:
        with ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(lambda c: _read_all_parts(cmd, base + c.file, full_env, timeout), cases))
    finally:
        server.shutdown()
        server.server_close()


def _read_all_parts(cmd: str, url: str, env: dict[str, str], timeout: float) -> str:
    out, part, count = [], 1, 1
    while part <= count and part <= _MAX_PARTS:
        argv = shlex.split(cmd.replace("{url}", url)) + (["--part", str(part)] if part > 1 else [])
        try:
            result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            break
        out.append(result.stdout)
        found = re.search(r"Part \d+ of (\d+)", result.stdout)
        count = int(found.group(1)) if found else 1
        part += 1
    return "\n".join(out)


def _serve(pages: dict[str, bytes]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = pages.get(self.path.split("?")[0].lstrip("/"))
            if body is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(n: int | None = None, start: int = 0, cmd: str | None = None, jobs: int = 2,
        env: dict[str, str] | None = None, show_worst: int = 10) -> Report:
    cases = load_cases(n, start)
    if cmd:
        outputs = read_with_command(cmd, cases, jobs=jobs, env=env)
    else:
        outputs = [read_in_process(case) for case in cases]
    rows = [counts(case, output) for case, output in zip(cases, outputs)]
    baseline = [counts(case, read_with_trafilatura(case)) for case in cases]
    ranked = sorted(zip(rows, cases, outputs), key=lambda rco: -(rco[0].unwanted + rco[0].missed))
    worst = [{"file": case.file, "missed": row.missed, "unwanted": row.unwanted,
              "unwanted_snippets": [s[:60] for s in case.must_not if normalise(s) in normalise(output)]}
             for row, case, output in ranked[:show_worst] if row.unwanted + row.missed]
    return Report(reader=cmd or "in-process", zennbot=Score.of(rows), trafilatura=Score.of(baseline),
                  empty_outputs=sum(1 for o in outputs if not o.strip()), worst=worst)


def main(as_json: bool = False, n: int | None = None, start: int = 0, cmd: str | None = None,
         jobs: int = 2, env: dict[str, str] | None = None) -> int:
    """Print the scores; exit code 1 when zennbot's precision or recall is below trafilatura's."""
    report = run(n=n, start=start, cmd=cmd, jobs=jobs, env=env)
    if as_json:
        print(json.dumps({**asdict(report), "at_least_trafilatura": report.at_least_trafilatura},
                         ensure_ascii=False))
    else:
        print(f"Extraction on {report.zennbot.pages} real pages (trafilatura's evaluation corpus); "
              f"zennbot's reader: {report.reader}")
        print(f"{'reader':<34}{'precision':>10}{'recall':>8}{'F1':>7}")
        for name, score in (("zennbot read", report.zennbot), ("trafilatura.extract (defaults)", report.trafilatura)):
            print(f"{name:<34}{score.precision:>10.3f}{score.recall:>8.3f}{score.f1:>7.3f}")
        print(f"empty outputs: {report.empty_outputs}")
        for page in report.worst:
            print(f"  {page['file']}: {page['missed']} missed, {page['unwanted']} unwanted "
                  f"{page['unwanted_snippets']}")
        print("at least trafilatura's precision and recall: "
              + ("yes" if report.at_least_trafilatura else "NO"))
    return 0 if report.at_least_trafilatura else 1
