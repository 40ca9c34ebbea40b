"""FastAPI applications (routes only; the services behind them are passed in)."""
