"""The serving engine: a runner that owns the device and model, and the asyncio loop that drives
the Scheduler (schedule -> execute -> update). Only `runner.py` imports torch."""

from otas.engine.engine import Engine, NotServed, Observer, Served

__all__ = ["Engine", "NotServed", "Observer", "Served"]
