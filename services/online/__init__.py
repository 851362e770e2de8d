"""Online RLHF: the policy learns from its own live traffic, and ships new weights safely.

- `simulator.py` (with `preference.py`, `routing.py`): simulated users send prompts to a
  stable and a canary policy replica and judge what they get from a hidden preference
  function, with noise and a share of adversarial raters.
- `loop.py`: the continuous loop (`rlhf-online run`): retrain the
  reward model on new preferences and hot-swap it, RL on recent live prompts plus a
  replay of older ones, push each round's weights to the canary, checkpoint.
- `canary.py` (with `quality.py`): safe rollout: compare the canary version's feedback
  with the stable version's by weight version, roll the canary back or promote.
- `demo.py`: `make demo-online`, the whole thing on one machine for a few minutes.
"""
