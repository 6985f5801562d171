"""Development-box tooling: the local launcher and offline model preparation.

The product (serve_app) never imports it; an import-linter contract enforces that.
"""
