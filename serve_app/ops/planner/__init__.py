"""Capacity and cost planner: does a tier fit its GPUs, how many sequences, what a token costs.

The seed lesson's formulas (`formulas`), applied to a Serve config (`plan`, whose text is
`report`) or to bare numbers, from the command line (`cli`):

    python -m serve_app.ops.planner plan configs/production.yaml --small-share 0.7
    python -m serve_app.ops.planner memory --arch llama-3.1-8b --gpu A100-80G --context-tokens 4096
    python -m serve_app.ops.planner cost --gpu-usd-per-hour 3.5 --tokens-per-s 1000
"""
