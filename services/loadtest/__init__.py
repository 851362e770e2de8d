"""Load testing for the policy and reward services: `python -m services.loadtest {policy,reward}`.

Metric names and definitions follow vLLM's `vllm bench serve` so numbers compare:
the client times each streamed response (TTFT, ITL, TPOT, E2EL) and the run's
throughput; see `summary.py`.
"""
