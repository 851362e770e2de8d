"""Capacity of the RLHF topology on paper and in simulation (issue 20).

`python -m bench.capacity` reads the inputs in bench/capacity/inputs/*.toml (GPU datasheets, model
shapes, the RL step, push constants, each with its source) and the committed measurements of this
machine in bench/results/, then writes bench/results/capacity.{json,png,md}: the scaling table from
the analytic model (model.py) and the SimPy simulation (simulation.py), and the calibration of both
against what was measured here and what was published (calibration.py).
"""
