"""The checkpoint byte format is stable: one checkpoint, byte for byte, encoded and decoded.

A change of these bytes means checkpoints written by an earlier release no
longer resume: bump the codec format (the first item of a step payload) instead.
"""

from __future__ import annotations

import datetime

import attrs
from typing_extensions import Self

from hybrid import Agent, Next, RetryPolicy
from hybrid.durable._codec import Codec, durable
from hybrid.durable._records import Checkpoint, StepKind


@attrs.frozen
class Parcel:
    weight: int
    tags: tuple[str, ...]


@durable(name="tests.Shipment", version=3)
@attrs.define
class Shipment(Agent[str]):
    order: str
    parcels: list[Parcel]
    notes: dict[str, float]
    due: datetime.date | None = None
    tries: int = 0

    async def ship(self, carrier: str, *extra: int) -> Next[Self]:
        return Next.done(carrier)

    def give_up(self, error: Exception) -> Next[Self]:
        return Next.done("given up")


# [format 1, {fields}, [fallback, [retry policy], timeout], "dhl", 7, 8]
GOLDEN_STEP = bytes.fromhex(
    "960185a56f72646572a46f2d3137a770617263656c739282a47461677391a766726167696c65a6776569676874cd04b0"
    "82a47461677390a677656967687450a56e6f74657381a7696e7375726564cb4058e00000000000a3647565aa32303234"
    "2d30322d3239a574726965730093a7676976655f75709604cb3fe0000000000000cb4000000000000000cb4020000000"
    "000000cb000000000000000091b86275696c74696e733a436f6e6e656374696f6e4572726f72cb403e000000000000a3"
    "64686c0708"
)


def shipment() -> tuple[Shipment, Next[Shipment]]:
    agent = Shipment(
        "o-17", [Parcel(1200, ("fragile",)), Parcel(80, ())], {"insured": 99.5}, datetime.date(2024, 2, 29)
    )
    policy = RetryPolicy(attempts=4, initial=0.5, factor=2.0, max_delay=8.0, jitter=0.0, retry_on=(ConnectionError,))
    step = Next.do_async(agent.ship, "dhl", 7, 8).retry(policy).timeout(30.0).fallback(agent.give_up)
    return agent, step


def test_a_step_checkpoint_encodes_to_the_same_bytes() -> None:
    """Fields (nested attrs, tuple, dict, date, None), arguments and modifiers: the golden bytes."""
    agent, step = shipment()
    kind, state, payload = Codec().encode_step("k", agent, step)
    assert (kind, state) == (StepKind.ASYNC, "ship")
    assert payload == GOLDEN_STEP


def test_the_golden_bytes_decode_into_the_same_agent_and_step() -> None:
    """The golden bytes resume the agent and its transition, modifiers included."""
    codec = Codec()
    assert codec.register(Shipment) == "tests.Shipment"
    saved = Checkpoint("k", 1, 1, "tests.Shipment", 3, StepKind.ASYNC, "ship", GOLDEN_STEP)
    agent, nxt = codec.decode_step(saved)
    expected, _ = shipment()
    assert agent == expected
    assert nxt is not None
    assert nxt.kind == "do_async"
    assert nxt.args == ("dhl", 7, 8)
    mods = nxt.modifiers
    assert mods is not None
    assert mods.timeout == 30.0
    assert mods.retry is not None
    assert mods.retry.retry_on == (ConnectionError,)
    assert mods.retry.attempts == 4
