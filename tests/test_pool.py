"""hybrid.Pool: supervised copies of one agent behind one address, by routing."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any, cast

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import Self

import hybrid
from hybrid import Agent, Next, Pool, Routing


@attrs.frozen
class Work(hybrid.Request[str]):
    seconds: float = 0.0
    user: str = ""


@attrs.frozen
class Note:
    text: str
    user: str = ""


@attrs.frozen
class Notes(hybrid.Request[list[str]]):
    user: str = ""


@attrs.frozen
class Crash(hybrid.Request[None]):
    user: str = ""


class Worker(Agent):
    def __init__(self, label: str = "") -> None:
        self.label = label
        self.notes: list[str] = []

    @hybrid.on_request
    async def work(self, request: Work) -> str:
        await trio.sleep(request.seconds)
        return self.ctx.address.name

    @hybrid.on_event
    async def note(self, event: Note) -> None:
        self.notes.append(event.text)

    @hybrid.on_request
    async def read(self, request: Notes) -> list[str]:
        return list(self.notes)

    @hybrid.on_request
    async def crash(self, request: Crash) -> None:
        self.ctx.do_next(Next.fail(RuntimeError("worker crashed")))


async def members(pool: hybrid.Address[Pool[Any]]) -> tuple[hybrid.Address[Worker], ...]:
    found = await pool.request(hybrid.PoolMembers())
    return cast("tuple[hybrid.Address[Worker], ...]", found)


async def ask_for(address: hybrid.Address[Pool[Worker]], request: Work) -> None:
    await address.request(request)


async def test_round_robin_spreads_requests_evenly_and_members_answer_in_parallel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(Worker, size=4))
        answers: list[str] = []

        async def ask() -> None:
            answers.append(await pool.request(Work(seconds=1)))

        start = trio.current_time()
        async with trio.open_nursery() as callers:
            for _ in range(8):
                callers.start_soon(ask)
        assert trio.current_time() - start == 2
        assert sorted(Counter(answers).values()) == [2, 2, 2, 2]
        assert len(await members(pool)) == 4
        pool.interrupt()


async def test_round_robin_spreads_events_in_turn() -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(Worker, size=3))
        for i in range(7):
            pool.send(Note(str(i)))
        got = [await member.request(Notes()) for member in await members(pool)]
        assert got == [["0", "3", "6"], ["1", "4"], ["2", "5"]]
        pool.interrupt()


async def test_smallest_mailbox_avoids_a_busy_member(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(Worker, size=2, routing=Routing.SMALLEST_MAILBOX))
        first, second = await members(pool)
        async with trio.open_nursery() as holder:
            holder.start_soon(ask_for, pool, Work(seconds=100))
            await trio.sleep(1)
            busy = [member for member in (first, second) if not member.statistics().idle]
            assert len(busy) == 1
            answers = [await pool.request(Work(seconds=1)) for _ in range(5)]
            assert busy[0].name not in answers
            holder.cancel_scope.cancel()
        pool.interrupt()


async def test_random_routing_reaches_every_member_eventually() -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(Worker, size=3, routing=Routing.RANDOM))
        answers = {await pool.request(Work()) for _ in range(200)}
        assert answers == {member.name for member in await members(pool)}
        pool.interrupt()


async def test_consistent_hash_sends_every_message_of_a_key_to_one_member_in_order() -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(
            nursery, Pool(Worker, size=4, routing=Routing.CONSISTENT_HASH, key=lambda message: message.user)
        )
        users = [f"user-{i}" for i in range(20)]
        for n in range(5):
            for user in users:
                pool.send(Note(f"{user}:{n}", user=user))
        owners = {user: await pool.request(Work(user=user)) for user in users}
        assert len(set(owners.values())) > 1  # spread over members
        by_name = {member.name: member for member in await members(pool)}
        for user, owner in owners.items():
            notes = await by_name[owner].request(Notes())
            assert [note for note in notes if note.startswith(f"{user}:")] == [f"{user}:{n}" for n in range(5)]
            assert await pool.request(Notes(user=user)) == notes  # the same member again
        pool.interrupt()


async def test_a_key_function_returning_another_type_fails_the_request_in_the_caller() -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(Worker, size=2, routing=Routing.CONSISTENT_HASH, key=lambda message: 1.5))  # type: ignore[arg-type,return-value]
        with pytest.raises(TypeError, match="key function must return a str, bytes or int, got 1.5"):
            await pool.request(Work())
        pool.interrupt()


async def test_broadcast_gives_every_event_to_every_member_and_refuses_requests_in_the_sender() -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(Worker, size=3, routing=Routing.BROADCAST))
        pool.send(Note("a"))
        pool.send(Note("b"))
        for member in await members(pool):
            assert await member.request(Notes()) == ["a", "b"]
        with pytest.raises(hybrid.UnhandledMessage, match=r"Pool\[Worker\] has no @hybrid.on_request handler for Work"):
            pool.request(Work())
        pool.interrupt()


async def test_a_message_no_member_handles_is_refused_in_the_sender() -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(Worker, size=2))
        assert pool.handles(Note) and pool.handles(Work) and not pool.handles(str)
        with pytest.raises(hybrid.UnhandledMessage, match=r"Pool\[Worker\] has no @hybrid.on_event handler for str"):
            pool.send("hello")
        pool.interrupt()


async def test_a_failed_member_is_restarted_and_requests_routed_to_it_meanwhile_are_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class SlowRestarts(Pool[Worker]):
        restart_backoff = hybrid.Backoff(initial=1.0)

    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, SlowRestarts(Worker, size=2))
        first, _ = await members(pool)
        await pool.request(Crash())  # round robin: the first member crashes after answering
        await trio.sleep(0.1)
        assert first.statistics().phase == "ended"
        # The next request to the first member waits for its new instance instead of failing.
        answers = [await pool.request(Work()) for _ in range(4)]
        assert answers.count(first.name) == 2
        assert first.statistics().phase == "events"
        assert first.is_alive
        pool.interrupt()


async def test_a_pool_past_its_restart_intensity_fails_and_its_callers_learn_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The pool runs under a runner, so that its failure does not cancel the caller:
    # whether the last request reaches the pool before it ends or after, it is refused.
    runner = hybrid.AgentRunner(Pool(Worker, size=1))
    reasons: list[hybrid.StopReason] = []

    async def run_pool() -> None:
        reasons.append(await runner.run())

    stopped: list[hybrid.AgentStopped] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_pool)
        for _ in range(10):
            try:
                await runner.address.request(Crash())
            except hybrid.AgentStopped as error:
                stopped.append(error)
                break
    assert stopped  # the caller after the last restart was told
    assert isinstance(reasons[0].error, hybrid.RestartIntensityExceeded)


async def test_a_pool_can_be_a_supervised_child_and_stops_its_members_first() -> None:
    ended: list[str] = []

    class Tracked(Worker):
        async def on_stop(self, reason: hybrid.StopReason) -> None:
            ended.append(self.ctx.address.name)

    class App(hybrid.Supervisor):
        def begin(self) -> Next[Self]:
            self.pool = self.ctx.spawn(functools.partial(Pool, Tracked, size=2), name="workers")
            return Next.events()

        async def on_stop(self, reason: hybrid.StopReason) -> None:
            ended.append("app")

    async with trio.open_nursery() as nursery:
        app = hybrid.spawn(nursery, App(), name="app")
        await trio.testing.wait_all_tasks_blocked()
        app.interrupt()
    assert sorted(ended[:2]) == ["app/workers/Tracked-1", "app/workers/Tracked-2"]
    assert ended[2:] == ["app"]


async def test_a_factory_with_agent_type_and_one_returning_the_wrong_type() -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(functools.partial(Worker, "x"), size=2, agent_type=Worker))
        assert await pool.request(Work()) == f"{pool.name}/Worker-1"
        pool.interrupt()

    class Other(Agent):
        pass

    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            hybrid.spawn(nursery, Pool(cast(Any, Other), size=1, agent_type=Worker))
    assert caught.group_contains(TypeError, match=r"returned .*Other object.*, not a Worker")


def test_bad_arguments_are_refused_at_the_call() -> None:
    with pytest.raises(ValueError, match="Pool size must be an int >= 1, got 0"):
        Pool(Worker, size=0)
    with pytest.raises(TypeError, match="Pool needs the workers' class"):
        Pool(functools.partial(Worker, "x"), size=1)
    with pytest.raises(TypeError, match="Pool routing must be a hybrid.Routing"):
        Pool(Worker, size=1, routing="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key= is required by Routing.CONSISTENT_HASH"):
        Pool(Worker, size=1, routing=Routing.CONSISTENT_HASH)
    with pytest.raises(ValueError, match="used by no other routing"):
        Pool(Worker, size=1, key=str)
    with pytest.raises(TypeError, match="Pool agent_type must be an Agent subclass"):
        Pool(Worker, size=1, agent_type=cast(Any, int))


def test_pool_classes_are_made_once_per_worker_type() -> None:
    assert type(Pool(Worker, size=1)) is type(Pool(Worker, size=2))
    assert type(Pool(Worker, size=1)).__name__ == "Pool[Worker]"
    assert type(Pool(Worker, size=1, routing=Routing.BROADCAST)) is not type(Pool(Worker, size=1))


@attrs.frozen
class Poison:
    user: str = ""


class SlowToStop(Worker):
    """A worker whose on_stop awaits (closing a connection, say): it refuses messages while it ends."""

    @hybrid.on_event
    async def poison(self, event: Poison) -> None:
        self.ctx.do_next(Next.fail(RuntimeError("poison")))

    async def on_stop(self, reason: hybrid.StopReason) -> None:
        await trio.sleep(1)


async def test_messages_routed_to_a_member_while_it_ends_wait_for_its_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(SlowToStop, size=2))
        first, second = await members(pool)
        pool.send(Poison())  # round robin: the first member fails, then spends a second in on_stop
        await trio.sleep(0.1)
        for n in range(6):
            pool.send(Note(str(n)))
        answers = [await pool.request(Work()) for _ in range(4)]  # two of them routed to the ending member
        await trio.sleep(2)
        notes = [await first.request(Notes()), await second.request(Notes())]
        assert sorted(notes[0] + notes[1], key=int) == [str(n) for n in range(6)]  # none lost
        assert answers.count(first.name) == 2
        pool.interrupt()


async def test_a_member_that_ends_for_good_leaves_the_rotation_and_the_last_one_ends_the_pool() -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(nursery, Pool(Worker, size=3, restart=hybrid.Restart.TEMPORARY))
        first, *_ = await members(pool)
        first.interrupt()
        await first.join()
        await trio.testing.wait_all_tasks_blocked()
        assert [member.name for member in await members(pool)] == [f"{pool.name}/Worker-2", f"{pool.name}/Worker-3"]
        answers = {await pool.request(Work()) for _ in range(6)}
        assert first.name not in answers
        for member in await members(pool):
            member.interrupt()
        await pool.join()  # finished once its last member ended
        assert not pool.is_alive
        with pytest.raises(hybrid.AgentStopped):
            pool.send(Note("late"))


async def test_broadcast_goes_on_past_a_member_that_ends_for_good_while_it_is_sent_to(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(
            nursery, Pool(SlowToStop, size=3, routing=Routing.BROADCAST, restart=hybrid.Restart.TEMPORARY)
        )
        first, second, third = await members(pool)
        first.send(Poison())
        await trio.sleep(0.1)  # the first member is in its one-second on_stop, its mailbox closed
        pool.send(Note("all"))
        await trio.sleep(2)
        assert await second.request(Notes()) == ["all"]
        assert await third.request(Notes()) == ["all"]
        assert f"{first.name} has ended; it missed Note(text='all'" in caplog.text
        assert [member.name for member in await members(pool)] == [second.name, third.name]
        pool.interrupt()


async def test_when_a_consistent_hash_member_leaves_only_its_keys_move(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hybrid._pool._OWNERS_KEPT", 8)  # the owners' cache evicts too
    async with trio.open_nursery() as nursery:
        pool = hybrid.spawn(
            nursery,
            Pool(
                Worker, size=4, routing=Routing.CONSISTENT_HASH, key=lambda m: m.user, restart=hybrid.Restart.TEMPORARY
            ),
        )
        users = [f"user-{i}" for i in range(40)]
        before = {user: await pool.request(Work(user=user)) for user in users}
        assert before == {user: await pool.request(Work(user=user)) for user in users}  # stable, cache or not
        gone = (await members(pool))[0]
        gone.interrupt()
        await gone.join()
        await trio.testing.wait_all_tasks_blocked()
        after = {user: await pool.request(Work(user=user)) for user in users}
        moved = {user for user in users if before[user] != after[user]}
        assert moved == {user for user in users if before[user] == gone.name}
        assert moved  # it owned some
        pool.interrupt()
