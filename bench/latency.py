"""`zennbot bench latency`: how soon the answer reaches the chat once the model starts writing.

A Gemini stub on 127.0.0.1 streams the answer in chunks with a pause between them (as Gemini
does); the question goes through the real ChatGoogleGenerativeAI, graph, tools, service and the
console adapter. Measured per question, in one process on one clock:
- first word: from the stub writing the answer's first chunk to the first answer text printed;
- end to end: from the question to the complete answer printed.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import statistics
import tempfile
import time
from pathlib import Path

from langchain_core.messages import AIMessage

from adapters.console import ask
from agent.urlguard import UrlPolicy
from bench.gemini_stub import GeminiStub
from bench.replica import ReplicaServer
from bench.scripted_model import current_turn, tool_call
from bot.runtime import model_from, open_runtime
from bot.settings import Settings

ANSWER = ("asap さんの一番いいねが多い記事は「DeepSeek-R1の論文読んだ？【勉強になるよ】」(921 いいね) です。"
          "論文の要点を順に、数式を避けて噛み砕いて説明しているのが評価されている理由です。") * 4
CHUNK_CHARS = 40
CHUNK_DELAY = 0.05
QUESTIONS = 5


class _TimedOutput(io.StringIO):
    """The console's stdout, noting when the first answer text was written."""

    def __init__(self) -> None:
        super().__init__()
        self.first_text_at: float | None = None

    def write(self, text: str) -> int:
        if self.first_text_at is None and text.strip():
            self.first_text_at = time.perf_counter()
        return super().write(text)


def _policy(zenn_url: str):
    def policy(messages) -> AIMessage:
        _, _, since = current_turn(messages)
        return tool_call("read_page", url=zenn_url + "/asap") if not since else AIMessage(content=ANSWER)
    return policy


async def run_latency(questions: int = QUESTIONS) -> dict:
    first_word: list[float] = []
    end_to_end: list[float] = []
    streamed = True  # every answer began to show before the model had written its last chunk
    async with ReplicaServer() as zenn, GeminiStub(policy=_policy(zenn.url), chunk_chars=CHUNK_CHARS,
                                                   chunk_delay=CHUNK_DELAY) as gemini:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(_env_file=None, zennbot_db=str(Path(tmp) / "bench.db"), zenn_base_url=zenn.url,
                                google_api_key="bench", google_gemini_base_url=gemini.url,
                                zennbot_user_rate_limit=1000, zennbot_thread_rate_limit=1000)
            policy = UrlPolicy(trusted_addresses=frozenset({ipaddress.ip_address("127.0.0.1")}))
            async with await open_runtime(settings, model=model_from(settings), policy=policy) as runtime:
                for n in range(questions):
                    out = _TimedOutput()
                    started = time.perf_counter()
                    reply = await ask(runtime.service, f"latency-{n}", f"{zenn.url}/asap 一番人気は？", out=out,
                                      progress_out=io.StringIO())
                    finished = time.perf_counter()
                    if not reply.ok or out.first_text_at is None:
                        raise RuntimeError(f"the latency run failed: {reply.text}")
                    answer_call = gemini.calls[-1]
                    first_word.append(out.first_text_at - answer_call.sent_at[0])
                    streamed = streamed and out.first_text_at < answer_call.sent_at[-1]
                    end_to_end.append(finished - started)
    stream_seconds = CHUNK_DELAY * (len(range(0, len(ANSWER), CHUNK_CHARS)) - 1)
    return {
        "questions": questions,
        "answer_chunks": len(range(0, len(ANSWER), CHUNK_CHARS)),
        "chunk_delay_s": CHUNK_DELAY,
        "model_stream_s": round(stream_seconds, 3),
        "first_word_ms_median": round(statistics.median(first_word) * 1000, 1),
        "first_word_ms_max": round(max(first_word) * 1000, 1),
        "end_to_end_s_median": round(statistics.median(end_to_end), 3),
        "end_to_end_s_max": round(max(end_to_end), 3),
        "shown_while_written": streamed,
    }


def format_latency(result: dict) -> str:
    return "\n".join([
        f"streaming ({result['questions']} questions, a stub streaming {result['answer_chunks']} chunks "
        f"{result['chunk_delay_s'] * 1000:.0f} ms apart = {result['model_stream_s']:.2f} s of answer):",
        f"  first answer text in the chat after the model's first chunk: median {result['first_word_ms_median']:.1f} ms, "
        f"max {result['first_word_ms_max']:.1f} ms",
        f"  question to complete answer: median {result['end_to_end_s_median']:.2f} s, "
        f"max {result['end_to_end_s_max']:.2f} s",
    ])


def main(as_json: bool = False) -> int:
    result = asyncio.run(run_latency())
    print(json.dumps(result) if as_json else format_latency(result))
    return 0
