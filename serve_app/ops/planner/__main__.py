"""`python -m serve_app.ops.planner`: see serve_app.ops.planner.cli."""

from serve_app.ops.planner.cli import main

if __name__ == "__main__":
    main()
