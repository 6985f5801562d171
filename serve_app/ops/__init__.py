"""Operator command-line tools: the capacity and cost planner, the savings report."""
