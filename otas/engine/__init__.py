"""The serving engine: a runner that owns the device and model, and the asyncio loop that drives
the Scheduler (schedule -> execute -> update). Only `runner.py` imports torch. `serving.py` states
what any engine behind the HTTP app provides (`ServingEngine`)."""

from otas.engine.engine import Engine
from otas.engine.serving import NotServed, Observer, Served, ServingEngine

__all__ = ["Engine", "NotServed", "Observer", "Served", "ServingEngine"]
