"""The reward service under a closed loop of clients, as `make bench-reward` drives it (SimPy).

Throughput through the service is not the bare forward rate: it depends on the batches the
dynamic batcher forms, and those depend on how many clients wait and how their requests
arrive. This model replays the batcher's rule (services/reward/batcher.py) on the benchmark's
traffic, so its only inputs are costs measured in pieces (bench/capacity/measure_reward.py):

- a batch's forward at each measured batch size, linear between them (a line fitted through all sizes
  misses the small batches by a third: one item costs as much as four, the per-layer overhead dominates);
- a request's latency besides the forward and the batcher's wait (`request_s`), of which the
  server's event loop spends `loop_s` one request at a time (a burst of replies comes back
  spread out, so a cohort of clients may miss the batcher's `max_wait_s` window and split);
- CPU seconds per request (server and client) that compete with a running forward for the cores. The
  forward's intra-op threads occupy every core and meet at the end of each parallel region, so a core
  taken by request handling stalls the whole region (the other threads wait for the straggler): a
  forward loses the whole CPU time of the requests handled while it runs, not a per-core share. The
  reward server's own batch-time metric shows it: at 64 clients its forward of a 28-item batch took
  0.34-0.37 s against 0.25-0.28 s in-process in three of the four rounds of capacity.interleaved.json.

Each of C clients sends one pair, waits for its score and sends the next, the items cycled in the
benchmark's order. The batcher waits for a first item, then until `max_wait_s` after the oldest
queued item or until the queue fills a batch (`max_batch` items or the token budget), and takes
items in arrival order while they fit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import simpy


@dataclass(frozen=True)
class ServiceCosts:
    """One reward service's measured costs and batching settings."""

    forward_by_batch: tuple[tuple[int, float], ...] = field(
        metadata={"help": "(batch size, forward seconds) as measured, sizes rising; at least two."}
    )
    request_s: float = field(metadata={"help": "A request's latency besides the forward and the batcher's wait."})
    loop_s: float = field(metadata={"help": "Seconds of the server's event loop per request (one at a time)."})
    cpu_per_request_s: float = field(metadata={"help": "CPU seconds per request, server and client together."})
    max_batch: int = field(metadata={"help": "The batcher's max_batch_size."})
    max_wait_s: float = field(metadata={"help": "The batcher's max_wait_ms, in seconds."})
    max_batch_tokens: int = field(default=0, metadata={"help": "Padded-token budget per batch (0: none)."})
    rows_per_item: int = field(default=2, metadata={"help": "Padded rows one item costs (similarity: 2)."})

    def __post_init__(self) -> None:
        sizes = [size for size, _ in self.forward_by_batch]
        if len(sizes) < 2 or sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError(f"forward_by_batch needs two or more rising batch sizes >= 1, got {sizes}")

    def forward_s(self, pairs: int) -> float:
        """The measured forward at `pairs`, linear between measured sizes and along the last segment beyond."""
        points = self.forward_by_batch
        for (low, low_s), (high, high_s) in zip(points, points[1:]):
            if pairs <= high:
                break  # else: the last segment, extended
        return max(0.0, low_s + (high_s - low_s) * (pairs - low) / (high - low))


def _fits(costs: ServiceCosts, count: int, longest: int, tokens: int) -> bool:
    """services/reward/batcher.py's rule: may an item of `tokens` join `count` items whose longest is `longest`."""
    if count >= costs.max_batch:
        return False
    budget = costs.max_batch_tokens
    return not budget or count == 0 or (count + 1) * costs.rows_per_item * max(longest, tokens) <= budget


def _fills(costs: ServiceCosts, queue: deque) -> bool:
    count = longest = 0
    for _, tokens, _ in queue:
        if not _fits(costs, count, longest, tokens):
            return True
        count, longest = count + 1, max(longest, tokens)
    return False


def closed_loop(costs: ServiceCosts, clients: int, token_lengths: Sequence[int], requests: int = 256) -> dict:
    """Pairs/s and mean batch size of `requests` one-pair requests from `clients` back-to-back clients."""
    env = simpy.Environment()
    loop = simpy.Resource(env, capacity=1)
    queue: deque = deque()  # (enqueued, tokens, done event)
    finished = env.event()
    state = {"arrived": env.event(), "sent": 0, "handled": 0, "batches": 0, "pairs": 0}
    transit = max(0.0, costs.request_s - costs.loop_s)

    def client():
        while state["sent"] < requests:
            index = state["sent"]
            state["sent"] += 1
            yield env.timeout(transit)
            with loop.request() as turn:
                yield turn
                yield env.timeout(costs.loop_s)
            state["handled"] += 1
            done = env.event()
            queue.append((env.now, token_lengths[index % len(token_lengths)], done))
            if not state["arrived"].triggered:
                state["arrived"].succeed()
            yield done

    def wait_for_arrival(timeout: float | None):
        state["arrived"] = env.event()
        events = [state["arrived"]] + ([env.timeout(timeout)] if timeout is not None else [])
        yield env.any_of(events)

    def worker():
        while True:
            while not queue:
                yield from wait_for_arrival(None)
            deadline = queue[0][0] + costs.max_wait_s
            while not _fills(costs, queue) and env.now < deadline:
                yield from wait_for_arrival(deadline - env.now)
            batch, longest = [], 0
            while queue and _fits(costs, len(batch), longest, queue[0][1]):
                item = queue.popleft()
                batch.append(item)
                longest = max(longest, item[1])
            handled = state["handled"]
            yield env.timeout(costs.forward_s(len(batch)))
            # requests handled while the forward ran stalled it for their CPU time (see the module docstring)
            overlap = state["handled"] - handled
            if overlap:
                yield env.timeout(overlap * costs.cpu_per_request_s)
            state["batches"] += 1
            state["pairs"] += len(batch)
            for _, _, done in batch:
                done.succeed()
            if state["pairs"] >= requests:
                finished.succeed()
                return

    for _ in range(clients):
        env.process(client())
    env.process(worker())
    env.run(until=finished)
    return {
        "pairs_per_s": requests / env.now,
        "mean_batch_size": state["pairs"] / state["batches"],
        "batches": state["batches"],
    }
