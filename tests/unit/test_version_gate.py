import asyncio

from services.policy.version_gate import VersionGate


def run(coro):
    return asyncio.run(coro)


def test_swap_waits_for_leases_and_blocks_new_ones():
    async def scenario():
        gate = VersionGate()
        events = []
        lease_held = asyncio.Event()
        release = asyncio.Event()

        async def long_request():
            async with gate.lease() as version:
                events.append(("old-request", version))
                lease_held.set()
                await release.wait()

        async def swapper():
            await lease_held.wait()
            async with gate.swap(drain_timeout_s=5, abort_in_flight=lambda: asyncio.sleep(0)):
                events.append(("swap", gate.active_leases))
                gate.advance("v1")

        async def late_request():
            await lease_held.wait()
            await asyncio.sleep(0.01)  # arrives while the swap is waiting
            async with gate.lease() as version:
                events.append(("late-request", version))

        tasks = [asyncio.create_task(c()) for c in (long_request, swapper, late_request)]
        await asyncio.sleep(0.05)
        assert gate.swapping and gate.waiting == 1  # late request queued behind the swap
        release.set()
        await asyncio.gather(*tasks)
        return events

    assert run(scenario()) == [("old-request", 0), ("swap", 0), ("late-request", 1)]


def test_drain_timeout_aborts_in_flight():
    async def scenario():
        gate = VersionGate()
        aborted = asyncio.Event()

        async def stuck_request():
            async with gate.lease():
                await aborted.wait()  # only an abort ends it

        async def abort():
            aborted.set()

        task = asyncio.create_task(stuck_request())
        await asyncio.sleep(0)
        async with gate.swap(drain_timeout_s=0.05, abort_in_flight=abort):
            gate.advance("v1")
        await task
        return aborted.is_set(), gate.version

    assert run(scenario()) == (True, 1)
