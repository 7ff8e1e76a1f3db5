"""Turns across replicas, through the conversation service: waiting costs no database
connection, the wait is bounded, and a run is rolled back only when its owner is gone (the
owner that loses its lease stops and tells its asker; no one else answers twice or says the
question was lost). Two runtimes on one database stand for two replicas."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
from langchain_core.messages import AIMessage

from bot.messages import AnswerDelta, Ask, Done, Progress, Started
from tests.helpers import database_url, make_settings, query_rows, running
from tests.pg import both_stores

LEASE_TTL = 3.0  # short leases, so that losing one shows within a second
KILL_TTL = 12.0  # room for a renewal to reconnect (the pool backs off a second or more) on a loaded machine


def _short_leases(runtime, ttl: float = LEASE_TTL) -> None:
    runtime.service.store._turns.ttl = ttl


class Blocking:
    """A model whose first answer waits until released (the run is in progress meanwhile)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, messages) -> AIMessage:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.release.wait(60)
        return AIMessage(content=f"answer to: {messages[-1].content}")


async def _stop_running(settings, runtime, store_kind: str, thread: str = "console:t", for_s: float = 1000.0) -> None:
    """As if `runtime`'s process had been stopped (SIGSTOP, a paused VM) for `for_s` s, in the
    middle of a run: its lease on the thread lapsed in the database, and its own clock says
    that long has passed since it last renewed it."""
    expiry = "to_timestamp(?)" if store_kind == "postgres" else "?"
    await query_rows(settings, f"UPDATE thread_leases SET expires_at = {expiry} WHERE thread_id = ?",
                     (time.time() - 1, thread))
    runtime.service.store._turns.held[thread].renewed_at -= for_s


async def _taken_elsewhere(settings, store_kind: str) -> None:
    """Another holder, on another host, has the thread now, for one more second (as when the
    lease expired and another replica took it)."""
    expiry = "to_timestamp(?)" if store_kind == "postgres" else "?"
    await query_rows(settings, f"UPDATE thread_leases SET lease = 'taken', host = 'elsewhere', expires_at = {expiry}",
                     (time.time() + 1,))


def _texts(messages) -> list[str]:
    return [str(m.content) for m in messages]


async def _events(service, ask: Ask, started: asyncio.Event | None = None) -> list:
    events = []
    async for event in service.stream(ask):
        events.append(event)
        if isinstance(event, Started) and started is not None:
            started.set()  # checked and waiting for its turn
    return events


def _reply(events: list):
    return next(e.reply for e in events if isinstance(e, Done))


def _said_lost(events: list) -> bool:
    return any(isinstance(e, Progress) and "was lost" in e.text for e in events)


async def test_a_burst_of_new_threads_stays_within_the_connection_pool(tmp_path):
    """40 quick questions in new threads, a pool of 2, one run slot: the runs waiting for the slot
    hold no connection, so the database never sees more than the pool's 2 (before, 42)."""
    url = database_url(tmp_path)
    settings = make_settings(tmp_path, zennbot_database_url=url, zennbot_db_pool_size=2,
                             zennbot_max_concurrent_runs=1)
    async with running(settings, lambda messages: AIMessage(content="ok")) as (runtime, _):
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as observer:
            async def connections() -> int:
                row = await (await observer.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")).fetchone()
                return row[0]

            async with asyncio.timeout(30):
                while await connections() > 2:  # the set-up's two connections closed, their backends exiting
                    await asyncio.sleep(0.05)
            peak, seen = 0, 0
            burst = asyncio.gather(*(runtime.service.handle(f"console:b{i}", f"u{i}", f"question {i}")
                                     for i in range(40)))
            while not burst.done():
                peak, seen = max(peak, await connections()), seen + 1
                await asyncio.sleep(0.005)
            replies = await burst
    assert [r.ok for r in replies] == [True] * 40, [r.text for r in replies if not r.ok]
    assert 1 <= peak <= 2 and seen > 10, (peak, seen)


@both_stores
async def test_an_owner_whose_lease_is_taken_away_stops_and_tells_its_asker(tmp_path, store_kind):
    """The lease of a run in progress is taken away (as when it expired and another replica took
    it): the owner notices at its next renewal, stops its run and says so in one sentence, and
    writes nothing more to the thread, not even a rollback: the thread is the new holder's. The
    other replica answers the thread's next message once, after rolling the stopped run back
    (it cannot know that the owner told its asker, so it says the question was lost too)."""
    settings = make_settings(tmp_path)
    model = Blocking()
    async with running(settings, model) as (a, _), running(settings, lambda m: AIMessage(content="B answers")) as (b, _):
        _short_leases(a)
        _short_leases(b)
        first = asyncio.create_task(_events(a.service, Ask("console:t", "u", "first question")))
        await asyncio.to_thread(model.entered.wait, 60)
        await _taken_elsewhere(settings, store_kind)
        events = await asyncio.wait_for(first, 30)
        model.release.set()
        second = await asyncio.wait_for(_events(b.service, Ask("console:t", "u", "second question")), 60)
    reply = _reply(events)
    assert not reply.ok and "lost its hold on this thread" in reply.text
    assert _reply(second).ok and _reply(second).text == "B answers"
    assert not _said_lost(events) and _said_lost(second)
    assert await query_rows(settings, "SELECT count(*) FROM runs") == [(0,)]


async def test_killing_the_owners_connections_does_not_hand_its_run_to_another_replica(tmp_path):
    """PostgreSQL terminates every connection of the replica running a question (a network blip,
    a restart): its lease lives on, so it answers; the other replica's message in the same thread
    waits its turn and is answered after, with nobody told a question was lost."""
    url = database_url(tmp_path)
    settings = make_settings(tmp_path, zennbot_database_url=url)
    model = Blocking()
    async with running(settings, model) as (a, _), running(settings, lambda m: AIMessage(content="B answers")) as (b, _):
        _short_leases(a, KILL_TTL)
        _short_leases(b, KILL_TTL)
        first = asyncio.create_task(_events(a.service, Ask("console:t", "u", "first question")))
        await asyncio.to_thread(model.entered.wait, 60)
        waiting = asyncio.Event()
        second = asyncio.create_task(_events(b.service, Ask("console:t", "u", "second question"), waiting))
        await asyncio.wait_for(waiting.wait(), 30)
        with psycopg.connect(url, autocommit=True) as db:
            for _ in range(3):  # over a lease's lifetime, between and during renewals
                db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                await asyncio.sleep(KILL_TTL / 3)
        assert not second.done()  # still the first one's turn
        model.release.set()
        events, later = await asyncio.wait_for(asyncio.gather(first, second), 60)
    assert _reply(events).ok and _reply(events).text == "answer to: first question"
    assert _reply(later).ok and _reply(later).text == "B answers"
    assert not _said_lost(events) and not _said_lost(later)


@both_stores
async def test_a_message_that_cannot_get_its_turn_in_time_is_told_so(tmp_path, store_kind):
    """Another replica (on another host) holds the thread beyond the run timeout: the message
    waits at most that long, then says so in one sentence; nothing ran."""
    settings = make_settings(tmp_path, zennbot_run_timeout=1.0)
    model = Blocking()
    async with running(settings, model) as (runtime, _):
        expiry = "to_timestamp(?)" if store_kind == "postgres" else "?"
        await query_rows(settings, "INSERT INTO thread_leases (thread_id, lease, host, pid, process, expires_at) "
                             f"VALUES ('console:t', 'theirs', 'elsewhere', 1, 'p', {expiry})", (time.time() + 60,))
        reply = await asyncio.wait_for(runtime.service.handle("console:t", "u", "a question"), 30)
    assert not reply.ok and "couldn't get to your message within 1 s" in reply.text
    assert model.calls == 0


@both_stores
async def test_an_owner_that_wakes_after_another_took_its_thread_over_writes_nothing(tmp_path, store_kind):
    """Replica A stops running in the middle of a run for longer than its lease; B takes the
    thread over with its next message (A's run rolled back, its asker told) and answers. When A
    runs again and its model answers, nothing of A's run reaches the chat or the history, and
    A does not roll back B's turn: it ends with one sentence. (A's keeper is asleep here, so it
    is the check before each visible write that stops A.)"""
    settings = make_settings(tmp_path)
    model = Blocking()
    async with running(settings, model) as (a, _), running(settings, lambda m: AIMessage(content="B answers")) as (b, _):
        _short_leases(a, 600.0)  # no renewal due before the test ends
        first = asyncio.create_task(_events(a.service, Ask("console:t", "u", "first question")))
        await asyncio.to_thread(model.entered.wait, 60)
        await _stop_running(settings, a, store_kind)
        second = await asyncio.wait_for(_events(b.service, Ask("console:t", "u", "second question")), 60)
        model.release.set()  # A runs again: its model's answer arrives
        events = await asyncio.wait_for(first, 30)
        history = _texts(await b.agent.history("console:t"))
    reply = _reply(events)
    assert not reply.ok and "lost its hold on this thread" in reply.text
    assert not any(isinstance(e, AnswerDelta) for e in events)
    assert _reply(second).ok and _reply(second).text == "B answers" and _said_lost(second)
    assert history == ["second question", "B answers"], history
    assert await query_rows(settings, "SELECT count(*) FROM runs") == [(0,)]


@both_stores
async def test_an_owner_that_wakes_to_find_its_keeper_late_is_stopped_by_it(tmp_path, store_kind):
    """The same, with A's lease keeper due while A was stopped, and the thread taken by a holder
    on another host (for a second): the keeper, late, asks the database, finds the thread taken
    and stops A's run before its model has answered. B's next message rolls A's run back."""
    settings = make_settings(tmp_path)
    model = Blocking()
    async with running(settings, model) as (a, _), running(settings, lambda m: AIMessage(content="B answers")) as (b, _):
        _short_leases(a)
        first = asyncio.create_task(_events(a.service, Ask("console:t", "u", "first question")))
        await asyncio.to_thread(model.entered.wait, 60)
        await _taken_elsewhere(settings, store_kind)  # one statement: A's keeper cannot renew it back
        hold = a.service.store._turns.held.get("console:t")  # gone if the keeper was quicker still
        if hold is not None:
            hold.renewed_at -= 1000  # A did not run meanwhile
        events = await asyncio.wait_for(first, 30)  # the model has not answered
        model.release.set()
        second = await asyncio.wait_for(_events(b.service, Ask("console:t", "u", "second question")), 60)
        history = _texts(await b.agent.history("console:t"))
    assert not _reply(events).ok and "lost its hold on this thread" in _reply(events).text
    assert not any(isinstance(e, AnswerDelta) for e in events)
    assert _reply(second).ok and history == ["second question", "B answers"], history


@both_stores
async def test_an_owner_that_wakes_with_its_lapsed_lease_untaken_answers(tmp_path, store_kind):
    """A stops running for longer than its lease, but nobody wanted the thread meanwhile: the
    lease is still A's in the database, so A renews it and answers, once, and keeps its turn."""
    settings = make_settings(tmp_path)
    model = Blocking()
    async with running(settings, model) as (a, _):
        _short_leases(a, 600.0)
        first = asyncio.create_task(_events(a.service, Ask("console:t", "u", "first question")))
        await asyncio.to_thread(model.entered.wait, 60)
        await _stop_running(settings, a, store_kind)
        model.release.set()
        events = await asyncio.wait_for(first, 30)
        history = _texts(await a.agent.history("console:t"))
    assert _reply(events).ok and _reply(events).text == "answer to: first question"
    assert history == ["first question", "answer to: first question"], history
