"""hybrid.Leases: grants, fencing tokens, expiry, renewal, release, hold(), cancellation, on trio's clock."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings

import hybrid
from hybrid import Lease, LeaseLost, Leases

# -- helpers --------------------------------------------------------------------------


class Scripted(hybrid.LeaseTable):
    """A table over a real `Leases` whose renewals follow a script: "ok", "lost", "oserror", "hang"."""

    def __init__(self, *script: str, then: str = "ok") -> None:
        self.inner = Leases()
        self.script = list(script)
        self.then = then
        self.renewals = 0

    async def _acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        return await self.inner.acquire(name, holder, ttl=ttl)

    async def _renew(self, lease: Lease, ttl: float) -> Lease | None:
        self.renewals += 1
        step = self.script.pop(0) if self.script else self.then
        if step == "lost":
            await trio.lowlevel.checkpoint()
            return None
        if step == "oserror":
            await trio.lowlevel.checkpoint()
            raise ConnectionResetError("the database went away")
        if step == "hang":
            await trio.sleep_forever()
        return await self.inner.renew(lease, ttl=ttl)

    async def _release(self, lease: Lease) -> None:
        await self.inner.release(lease)

    async def _latest(self, name: str) -> tuple[Lease | None, float]:
        return await self.inner._latest(name)

    async def _wait_changed(self, name: str, remaining: float) -> None:
        await self.inner._wait_changed(name, remaining)


async def raised(fn: Callable[..., Awaitable[object]], *args: Any, **kwargs: Any) -> BaseException:
    """The exception awaiting ``fn(*args, **kwargs)`` raised (fails the test if it returned)."""
    try:
        result = await fn(*args, **kwargs)
    except BaseException as error:  # Cancelled too: the tests look at it
        return error
    pytest.fail(f"expected an exception, got {result!r}")


# -- grants, tokens, expiry --------------------------------------------------------------


async def test_acquire_grants_a_free_name_for_ttl_seconds_of_trios_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A free name is granted: token 1, expiring ttl seconds from now; current() shows it."""
    leases = Leases()
    await trio.sleep(5)
    lease = await leases.acquire("job", "a", ttl=10)
    assert lease == Lease(name="job", holder="a", token=1, expires_at=15.0, ttl=10.0)
    assert await leases.current("job") == lease
    assert await leases.current("other") is None


async def test_acquire_returns_none_while_another_holder_has_the_lease(autojump_clock: trio.testing.MockClock) -> None:
    """A second holder gets None until the first lease ends; the first lease is untouched."""
    leases = Leases()
    first = await leases.acquire("job", "a", ttl=10)
    await trio.sleep(9.9)
    assert await leases.acquire("job", "b", ttl=10) is None
    assert await leases.current("job") == first


async def test_acquiring_again_by_the_holder_renews_with_the_same_token(autojump_clock: trio.testing.MockClock) -> None:
    """The holder acquiring its own lease renews it: same token, expiry from now with the new ttl."""
    leases = Leases()
    first = await leases.acquire("job", "a", ttl=10)
    await trio.sleep(4)
    again = await leases.acquire("job", "a", ttl=3)
    assert first is not None and again is not None
    assert (again.token, again.expires_at, again.ttl) == (first.token, 7.0, 3.0)


async def test_an_expired_lease_is_granted_anew_with_a_larger_token(autojump_clock: trio.testing.MockClock) -> None:
    """At its expiry the name is free: another holder, or the same one, gets a new, larger token."""
    leases = Leases()
    first = await leases.acquire("job", "a", ttl=10)
    await trio.sleep(10)  # exactly at expires_at: expired
    assert await leases.current("job") is None
    second = await leases.acquire("job", "b", ttl=10)
    await trio.sleep(10)
    third = await leases.acquire("job", "b", ttl=10)  # the same holder after expiry: a new grant
    assert first is not None and second is not None and third is not None
    assert first.token < second.token < third.token
    assert (second.holder, third.holder) == ("b", "b")


async def test_tokens_increase_per_name_and_are_unique_across_names(autojump_clock: trio.testing.MockClock) -> None:
    """The in-process table numbers every grant in one sequence."""
    leases = Leases()
    tokens: list[int] = []
    for name in ("x", "y", "x", "y"):
        lease = await leases.acquire(name, "a", ttl=1)
        assert lease is not None
        tokens.append(lease.token)
        await leases.release(lease)
    assert tokens == [1, 2, 3, 4]


# -- renew -------------------------------------------------------------------------------


async def test_renew_extends_the_lease_from_now_and_keeps_its_token(autojump_clock: trio.testing.MockClock) -> None:
    """renew() returns a new record: same token, expiry = now + ttl (its own ttl by default)."""
    leases = Leases()
    lease = await leases.acquire("job", "a", ttl=10)
    assert lease is not None
    await trio.sleep(6)
    renewed = await leases.renew(lease)
    assert renewed == attrs.evolve(lease, expires_at=16.0)
    shorter = await leases.renew(renewed, ttl=2)
    assert (shorter.token, shorter.expires_at, shorter.ttl) == (lease.token, 8.0, 2.0)
    await trio.sleep(2)  # the shorter renewal ends the lease at 8, not 16
    assert await leases.acquire("job", "b", ttl=1) is not None


async def test_renewing_an_expired_lease_raises_lease_lost_saying_it_expired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A lease past its expiry cannot be renewed, even if nobody took it."""
    leases = Leases()
    lease = await leases.acquire("job", "a", ttl=10)
    assert lease is not None
    await trio.sleep(10)
    with pytest.raises(LeaseLost, match=r"cannot renew lease 'job' of 'a' \(token 1\): it expired 0 s ago"):
        await leases.renew(lease)
    assert await leases.current("job") is None


async def test_renewing_a_lease_taken_over_raises_lease_lost_naming_the_new_holder(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once another holder has the name, the old token is stale: renew raises, the new lease is untouched."""
    leases = Leases()
    old = await leases.acquire("job", "a", ttl=1)
    await trio.sleep(1)
    new = await leases.acquire("job", "b", ttl=10)
    assert old is not None and new is not None
    with pytest.raises(LeaseLost, match="'b' holds the name now, under token 2"):
        await leases.renew(old)
    assert await leases.current("job") == new


async def test_renewing_a_released_lease_raises_lease_lost(autojump_clock: trio.testing.MockClock) -> None:
    """A released lease is gone: renew raises and does not bring it back."""
    leases = Leases()
    lease = await leases.acquire("job", "a", ttl=10)
    assert lease is not None
    await leases.release(lease)
    with pytest.raises(LeaseLost, match="it was released"):
        await leases.renew(lease)
    assert await leases.current("job") is None


# -- release, fencing ------------------------------------------------------------------------


async def test_release_frees_the_name_at_once_and_is_idempotent(autojump_clock: trio.testing.MockClock) -> None:
    """After release another holder gets the name (a new token); releasing again changes nothing."""
    leases = Leases()
    lease = await leases.acquire("job", "a", ttl=10)
    assert lease is not None
    await leases.release(lease)
    await leases.release(lease)
    other = await leases.acquire("job", "b", ttl=10)
    assert other is not None and other.token > lease.token
    await leases.release(lease)
    assert await leases.current("job") == other
    assert trio.current_time() == 0  # nothing waited


async def test_a_stale_release_does_not_free_the_new_holders_lease(autojump_clock: trio.testing.MockClock) -> None:
    """Releasing an expired lease after the name was granted again leaves the new grant in place."""
    leases = Leases()
    old = await leases.acquire("job", "a", ttl=1)
    await trio.sleep(2)
    new = await leases.acquire("job", "b", ttl=10)
    assert old is not None and new is not None
    await leases.release(old)
    assert await leases.current("job") == new
    assert await leases.acquire("job", "c", ttl=10) is None


async def test_is_current_and_check_follow_the_token(autojump_clock: trio.testing.MockClock) -> None:
    """is_current is True only for the current grant; check raises LeaseLost with the reason otherwise."""
    leases = Leases()
    old = await leases.acquire("job", "a", ttl=1)
    assert old is not None
    assert await leases.is_current(old)
    await leases.check(old)
    await trio.sleep(1)
    assert not await leases.is_current(old)
    new = await leases.acquire("job", "b", ttl=5)
    assert new is not None
    assert await leases.is_current(new)
    assert not await leases.is_current(old)
    with pytest.raises(LeaseLost, match=r"lease 'job' of 'a' \(token 1\) is not current: 'b' holds the name now"):
        await leases.check(old)
    forged = attrs.evolve(new, token=99)
    with pytest.raises(LeaseLost, match="never granted token 99"):
        await leases.check(forged)
    await trio.sleep(5)
    with pytest.raises(LeaseLost, match=r"the name was granted again since \(token 2, to 'b'\)"):
        await leases.check(old)


async def test_wait_free_returns_at_once_when_free_else_at_release_or_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """wait_free wakes at the release (not later), or at the expiry when nobody releases."""
    leases = Leases()
    await leases.wait_free("job")
    assert trio.current_time() == 0
    lease = await leases.acquire("job", "a", ttl=10)
    assert lease is not None

    async def release_later() -> None:
        await trio.sleep(3)
        await leases.release(lease)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        await leases.wait_free("job")
        assert trio.current_time() == 3
    await leases.acquire("job", "b", ttl=4)
    await leases.wait_free("job")
    assert trio.current_time() == 7
    assert leases._freed == {}  # the waiters' events are gone


async def test_wait_free_waits_again_when_the_lease_is_renewed(autojump_clock: trio.testing.MockClock) -> None:
    """A renewal pushes the expiry: wait_free goes on waiting until the renewed lease ends."""
    leases = Leases()
    lease = await leases.acquire("job", "a", ttl=4)
    assert lease is not None

    async def renew_once() -> None:
        await trio.sleep(3)
        await leases.renew(lease, ttl=4)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(renew_once)
        await leases.wait_free("job")
    assert trio.current_time() == 7


# -- hold ----------------------------------------------------------------------------------------


async def test_hold_renews_over_a_body_much_longer_than_its_ttl(autojump_clock: trio.testing.MockClock) -> None:
    """The lease stays held (same token) through a long body, and is released at its end."""
    leases = Leases()
    async with leases.hold("job", "a", ttl=3) as lease:
        for _ in range(10):
            await trio.sleep(2.5)
            assert await leases.acquire("job", "b", ttl=1) is None
            current = await leases.current("job")
            assert current is not None and current.token == lease.token
    assert trio.current_time() == 25
    assert await leases.current("job") is None


async def test_hold_renews_every_third_of_the_ttl_by_default(autojump_clock: trio.testing.MockClock) -> None:
    """Renewals happen at ttl/3 (or renew_every), each pushing the expiry ttl ahead."""
    leases = Leases()
    async with leases.hold("job", "a", ttl=3) as lease:
        await trio.sleep(1.5)
        current = await leases.current("job")
        assert current is not None and current.expires_at == 4.0  # renewed at 1
    async with leases.hold("job", "a", ttl=3, renew_every=2) as lease:
        await trio.sleep(1.5)
        current = await leases.current("job")
        assert current is not None and current.expires_at == lease.expires_at
        await trio.sleep(1)
        current = await leases.current("job")
        assert current is not None and current.expires_at == trio.current_time() - 0.5 + 3


async def test_hold_releases_the_lease_when_the_body_raises_and_the_error_leaves_bare(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An exception of the body leaves the async with as itself (not in an ExceptionGroup); the lease is free."""
    leases = Leases()
    with pytest.raises(KeyError, match="boom"):  # noqa: PT012 - the body raises inside hold
        async with leases.hold("job", "a", ttl=3):
            await trio.sleep(5)
            raise KeyError("boom")
    assert await leases.current("job") is None


async def test_hold_cancels_the_body_and_raises_lease_lost_when_a_renewal_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A renewal that finds the lease lost cancels the body at once; LeaseLost leaves the async with."""
    table = Scripted("ok", "lost")
    reached: list[float] = []
    with pytest.raises(LeaseLost, match=r"was lost while held; the block was cancelled") as caught:  # noqa: PT012
        async with table.hold("job", "a", ttl=3):
            try:
                await trio.sleep(100)
            finally:
                reached.append(trio.current_time())
    assert reached == [2.0]  # the second renewal, at 2, found it lost
    assert isinstance(caught.value.__cause__, LeaseLost)
    assert await table.current("job") is None  # released all the same


async def test_hold_raises_lease_lost_when_the_ttl_passes_without_a_renewal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A renewal that never returns: the body is cancelled when the ttl passes, not later."""
    table = Scripted("ok", "hang")
    reached: list[float] = []
    with pytest.raises(LeaseLost, match=r"not renewed within its ttl of 3 s; the block was cancelled$"):  # noqa: PT012
        async with table.hold("job", "a", ttl=3):
            try:
                await trio.sleep(100)
            finally:
                reached.append(trio.current_time())
    assert reached == [4.0]  # renewed at 1 (until 4); the renewal at 2 hung
    assert await table.current("job") is None


async def test_hold_retries_a_renewal_that_fails_with_an_os_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One failed renewal is logged and tried again at the next tick; the body goes on."""
    table = Scripted("oserror")
    async with table.hold("job", "a", ttl=3) as lease:
        await trio.sleep(10)
        assert await table.is_current(lease)
    [record] = [r for r in caplog.records if r.name == "hybrid.lease"]
    assert record.levelno == logging.WARNING
    assert "renewing lease 'job' of 'a' (token 1) failed" in record.getMessage()
    assert "the database went away" in record.getMessage()


async def test_hold_with_renewals_failing_loses_the_lease_at_the_ttl_with_the_error_as_cause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Renewals that keep failing with OSError: LeaseLost at the ttl, chained from the last error."""
    table = Scripted(then="oserror")
    with pytest.raises(LeaseLost, match=r"last renewal: ConnectionResetError") as caught:
        async with table.hold("job", "a", ttl=3):
            await trio.sleep(100)
    assert trio.current_time() == 3
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert table.renewals == 2  # at 1 and 2 (the one at 3 comes too late)


async def test_a_body_that_overruns_its_lease_without_a_checkpoint_gets_lease_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ending normally after the lease ran out (no checkpoint to be cancelled at) still raises LeaseLost."""
    leases = Leases()
    with pytest.raises(LeaseLost, match="not renewed within its ttl of 3 s; the block ran past its end"):
        async with leases.hold("job", "a", ttl=3):
            autojump_clock.jump(5)  # a long computation: no checkpoint, so no renewal either


async def test_a_waiting_hold_gets_the_lease_when_the_holder_leaves(autojump_clock: trio.testing.MockClock) -> None:
    """hold(wait=True) parks until the holder's block ends, then acquires at that moment with a new token."""
    leases = Leases()
    got: list[tuple[float, int]] = []

    async def second() -> None:
        async with leases.hold("job", "b", ttl=3) as lease:
            got.append((trio.current_time(), lease.token))

    async with trio.open_nursery() as nursery, leases.hold("job", "a", ttl=3) as first:
        nursery.start_soon(second)
        await trio.sleep(7)
        assert got == []
    assert got == [(7.0, first.token + 1)]


async def test_a_waiting_hold_gets_the_lease_when_it_expires(autojump_clock: trio.testing.MockClock) -> None:
    """A holder that stops renewing (acquired, never released): the waiter gets the lease at its expiry."""
    leases = Leases()
    stale = await leases.acquire("job", "crashed", ttl=5)
    assert stale is not None
    async with leases.hold("job", "b", ttl=3) as lease:
        assert trio.current_time() == 5
        assert lease.token == stale.token + 1


async def test_hold_without_wait_raises_would_block_when_the_lease_is_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """wait=False: a held lease raises trio.WouldBlock at once; a free one is acquired."""
    leases = Leases()
    async with leases.hold("job", "a", ttl=3):
        with pytest.raises(trio.WouldBlock, match="lease 'job' is held by another holder than 'b'"):
            async with leases.hold("job", "b", ttl=3, wait=False):
                pytest.fail("entered")  # pragma: no cover
    async with leases.hold("job", "b", ttl=3, wait=False) as lease:
        assert lease.holder == "b"
    assert trio.current_time() == 0


async def test_hold_works_over_any_lease_table(autojump_clock: trio.testing.MockClock) -> None:
    """hold is written once, over the hybrid.LeaseTable hooks: a wrapping table gets it too."""

    async def run(table: hybrid.LeaseTable) -> int:
        async with table.hold("job", "a", ttl=3) as lease:
            await trio.sleep(9.5)
            return lease.token

    assert await run(Leases()) == 1
    table = Scripted()
    assert await run(table) == 1
    assert table.renewals == 9


# -- cancellation ---------------------------------------------------------------------------------


async def test_a_cancelled_acquire_grants_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """acquire in a cancelled scope raises Cancelled and leaves the name free."""
    leases = Leases()
    with trio.CancelScope() as scope:
        scope.cancel()
        await leases.acquire("job", "a", ttl=3)
    assert scope.cancelled_caught
    assert await leases.current("job") is None


async def test_a_cancelled_renew_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """renew in a cancelled scope raises Cancelled and leaves the expiry as it was."""
    leases = Leases()
    lease = await leases.acquire("job", "a", ttl=3)
    assert lease is not None
    await trio.sleep(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await leases.renew(lease)
    assert scope.cancelled_caught
    assert await leases.current("job") == lease


async def test_a_cancelled_release_releases_all_the_same(autojump_clock: trio.testing.MockClock) -> None:
    """release in a cancelled scope frees the name, then raises Cancelled (as aclose does)."""
    leases = Leases()
    lease = await leases.acquire("job", "a", ttl=3)
    assert lease is not None
    with trio.CancelScope() as scope:
        scope.cancel()
        await leases.release(lease)
    assert scope.cancelled_caught
    assert await leases.current("job") is None


async def test_a_hold_cancelled_while_waiting_leaves_nothing_behind(autojump_clock: trio.testing.MockClock) -> None:
    """Cancelling hold's entry while it waits: no lease for it, no waiter left registered."""
    leases = Leases()
    first = await leases.acquire("job", "a", ttl=10)
    with trio.move_on_after(4) as scope:
        async with leases.hold("job", "b", ttl=3):
            pytest.fail("entered")  # pragma: no cover
    assert scope.cancelled_caught
    assert leases._freed == {}
    assert await leases.current("job") == first


async def test_a_hold_cancelled_from_outside_in_its_body_releases_and_lets_cancelled_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An outer cancellation of the body is the caller's: the scope catches it, the lease is released."""
    leases = Leases()
    with trio.move_on_after(5) as scope:
        async with leases.hold("job", "a", ttl=3):
            await trio.sleep(100)
    assert scope.cancelled_caught
    assert trio.current_time() == 5
    assert await leases.current("job") is None


async def test_a_cancelled_exit_of_hold_still_releases(autojump_clock: trio.testing.MockClock) -> None:
    """The release at the end of hold is shielded: a cancelled caller releases all the same."""
    leases = Leases()
    with trio.CancelScope() as scope:
        async with leases.hold("job", "a", ttl=3):
            scope.cancel()  # the body ends without a checkpoint: the exit runs cancelled
    assert scope.cancelled_caught
    assert await leases.current("job") is None


async def test_a_lost_lease_and_an_outer_cancellation_at_once_let_the_cancellation_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the caller's scope is cancelled too, Cancelled wins over LeaseLost (the caller is leaving)."""
    table = Scripted("hang")
    with trio.move_on_after(3) as scope:  # the lease's deadline is 3 too
        async with table.hold("job", "a", ttl=3):
            await trio.sleep(100)
    assert scope.cancelled_caught
    assert await table.current("job") is None


# -- bad input -------------------------------------------------------------------------------------


BAD_TTLS: list[tuple[object, type[Exception]]] = [
    (0, ValueError),
    (-1, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    ("3", TypeError),
    (True, TypeError),
    (None, TypeError),
]


@pytest.mark.parametrize(("ttl", "error"), BAD_TTLS)
async def test_a_bad_ttl_is_refused_at_the_call(ttl: object, error: type[Exception]) -> None:
    """acquire, renew and hold check ttl before anything happens."""
    leases = Leases()
    with pytest.raises(error, match="ttl must be a finite number of seconds > 0"):
        await leases.acquire("job", "a", ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(error, match="ttl must be"):
        leases.hold("job", "a", ttl=ttl)  # type: ignore[arg-type]
    lease = await leases.acquire("job", "a", ttl=1)
    assert lease is not None
    if ttl is not None:  # None means "the lease's own ttl" for renew
        with pytest.raises(error, match="ttl must be"):
            await leases.renew(lease, ttl=ttl)  # type: ignore[arg-type]
    assert await leases.current("job") == lease


@pytest.mark.parametrize(("value", "error"), [("", ValueError), (1, TypeError), (None, TypeError)])
async def test_a_bad_name_or_holder_is_refused(value: object, error: type[Exception]) -> None:
    """Names and holders are non-empty strs, for every method taking one."""
    leases = Leases()
    with pytest.raises(error, match="name must be a non-empty str"):
        await leases.acquire(value, "a", ttl=1)  # type: ignore[arg-type]
    with pytest.raises(error, match="holder must be a non-empty str"):
        await leases.acquire("job", value, ttl=1)  # type: ignore[arg-type]
    with pytest.raises(error, match="name must be"):
        await leases.current(value)  # type: ignore[arg-type]
    with pytest.raises(error, match="name must be"):
        await leases.wait_free(value)  # type: ignore[arg-type]
    with pytest.raises(error, match="holder must be"):
        leases.hold("job", value, ttl=1)  # type: ignore[arg-type]


async def test_a_bad_renew_every_or_lease_is_refused() -> None:
    """renew_every must be a positive number shorter than ttl; lease arguments must be Leases."""
    leases = Leases()
    with pytest.raises(ValueError, match=r"renew_every must be shorter than ttl \(3.0 s\), got 3"):
        leases.hold("job", "a", ttl=3, renew_every=3)
    with pytest.raises(ValueError, match="renew_every must be a finite number of seconds > 0"):
        leases.hold("job", "a", ttl=3, renew_every=0)
    with pytest.raises(TypeError, match="renew_every must be"):
        leases.hold("job", "a", ttl=3, renew_every="1")  # type: ignore[arg-type]
    for method in (leases.renew, leases.release, leases.is_current, leases.check):
        with pytest.raises(TypeError, match="expected a hybrid.Lease, got 'job'"):
            await method("job")  # type: ignore[arg-type]


def test_lease_is_a_frozen_record_exported_by_hybrid() -> None:
    """Lease is immutable and compares by value; the table and the error are public names."""
    lease = Lease(name="job", holder="a", token=1, expires_at=2.0, ttl=1.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        lease.token = 2  # type: ignore[misc]
    assert lease == Lease("job", "a", 1, 2.0, 1.0)
    assert hybrid.Lease is Lease and hybrid.Leases is Leases and hybrid.LeaseLost is LeaseLost
    assert issubclass(LeaseLost, hybrid.HybridError)


# -- properties ------------------------------------------------------------------------------------

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOLDERS = ("a", "b", "c")
step = st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from(HOLDERS), st.sampled_from([0.5, 1.0, 2.0, 3.0])),
    st.tuples(st.just("renew"), st.sampled_from(HOLDERS), st.sampled_from([0.5, 1.0, 2.0, 3.0])),
    st.tuples(st.just("release"), st.sampled_from(HOLDERS), st.just(0.0)),
    st.tuples(st.just("advance"), st.just(""), st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5])),
)


@SETTINGS
@given(steps=st.lists(step, max_size=60))
def test_a_lease_is_never_held_by_two_holders_at_once(steps: list[tuple[str, str, float]]) -> None:
    """Random acquire/renew/release/advance by three holders, against a model: at most one current lease, and
    tokens strictly increase with each new grant."""
    clock = trio.testing.MockClock()

    async def main() -> None:
        leases = Leases()
        mine: dict[str, Lease] = {}  # each holder's latest record
        owner: tuple[str, int, float] | None = None  # the model: holder, token, expiry
        last_token = 0
        for kind, holder, amount in steps:
            now = trio.current_time()
            live = owner if owner is not None and now < owner[2] else None
            if kind == "acquire":
                got = await leases.acquire("job", holder, ttl=amount)
                if live is not None and live[0] != holder:
                    assert got is None
                else:
                    assert got is not None
                    if live is not None:  # the holder renewed its own lease
                        assert got.token == live[1]
                    else:
                        assert got.token > last_token
                        last_token = got.token
                    assert got.expires_at == now + amount
                    owner = (holder, got.token, got.expires_at)
                    mine[holder] = got
            elif kind == "renew" and holder in mine:
                lease = mine[holder]
                if live is not None and live[1] == lease.token:
                    mine[holder] = await leases.renew(lease, ttl=amount)
                    owner = (holder, lease.token, now + amount)
                else:
                    with pytest.raises(LeaseLost):
                        await leases.renew(lease, ttl=amount)
            elif kind == "release" and holder in mine:
                await leases.release(mine[holder])
                if owner is not None and owner[1] == mine[holder].token:
                    owner = None
            elif kind == "advance":
                clock.jump(amount)
            currents = [h for h, lease in mine.items() if await leases.is_current(lease)]
            assert len(currents) <= 1
            now = trio.current_time()
            expected = owner[0] if owner is not None and now < owner[2] else None
            assert currents == ([] if expected is None else [expected])
            current = await leases.current("job")
            assert (current.holder if current is not None else None) == expected

    trio.run(main, clock=clock)


job = st.tuples(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 9.0]),  # body duration
    st.lists(st.sampled_from(["ok", "ok", "ok", "lost", "oserror", "hang"]), max_size=4),  # its renewals
)


@SETTINGS
@given(workers=st.lists(st.lists(job, min_size=1, max_size=4), min_size=2, max_size=4), ttl=st.sampled_from([1, 3]))
def test_hold_blocks_that_end_without_lease_lost_never_overlap(
    workers: list[list[tuple[float, list[str]]]], ttl: float
) -> None:
    """Workers holding one lease with random bodies and failing renewals: a block that ended without LeaseLost
    overlapped no other block's grant, and grants come in increasing token order."""

    async def main() -> None:
        leases = Leases()
        entered: list[tuple[float, int]] = []  # (time, token) of each block entered, in order
        clean: list[tuple[float, float, int]] = []  # (start, end, token) of blocks that ended without LeaseLost
        scripts: dict[str, list[str]] = {}

        class Table(hybrid.LeaseTable):
            async def _acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
                return await leases.acquire(name, holder, ttl=ttl)

            async def _renew(self, lease: Lease, ttl: float) -> Lease | None:
                script = scripts[lease.holder]
                what = script.pop(0) if script else "ok"
                if what == "lost":  # taken away (as by an expiry the holder missed): free for the others
                    await leases.release(lease)
                    return None
                if what == "oserror":
                    raise OSError("flaky")
                if what == "hang":
                    await trio.sleep_forever()
                return await leases.renew(lease, ttl=ttl)

            async def _release(self, lease: Lease) -> None:
                await leases.release(lease)

            async def _latest(self, name: str) -> tuple[Lease | None, float]:
                return await leases._latest(name)

            async def _wait_changed(self, name: str, remaining: float) -> None:
                await leases._wait_changed(name, remaining)

        table = Table()

        async def worker(index: int, jobs: list[tuple[float, list[str]]]) -> None:
            holder = f"w{index}"
            for duration, script in jobs:
                scripts[holder] = list(script)
                start = -1.0
                token = 0
                try:
                    async with table.hold("job", holder, ttl=ttl) as lease:
                        start, token = trio.current_time(), lease.token
                        entered.append((start, token))
                        await trio.sleep(duration)
                except LeaseLost:
                    continue
                clean.append((start, trio.current_time(), token))

        logging.getLogger("hybrid.lease").disabled = True
        try:
            async with trio.open_nursery() as nursery:
                for index, jobs in enumerate(workers):
                    nursery.start_soon(worker, index, jobs)
        finally:
            logging.getLogger("hybrid.lease").disabled = False
        tokens = [token for _, token in entered]
        assert tokens == sorted(set(tokens))
        for start, end, token in clean:
            assert not [t for at, t in entered if t != token and start < at < end]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_hold_refuses_a_holder_that_already_holds_the_lease(autojump_clock: trio.testing.MockClock) -> None:
    """Two blocks of one holder name would share one grant: the first to leave would free it under the other."""
    leases = hybrid.Leases()
    async with leases.hold("report", "a", ttl=10):
        with pytest.raises(ValueError, match=r"'a' already holds lease 'report' \(token 1\)"):
            async with leases.hold("report", "a", ttl=10):
                pass  # pragma: no cover
        assert (await leases.current("report")) is not None  # the first block still holds it
    assert await leases.current("report") is None
