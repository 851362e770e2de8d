"""Reward-model training (`rlhf-reward train`) and the simulated labeler that writes preference data.

- `preferences.py`: the feedback records (pairwise, ranked, ratings), their JSONL form, and the
  simulated labeler's data generation (`rlhf-reward simulate-preferences`).
- `simulated_preference.py`: the one simulated-preference model (hidden utility and rater noise),
  used by the labeler here and by the online loop's simulated users.
- `trainer.py`: Bradley-Terry / Plackett-Luce / regression training into a servable checkpoint.
"""
