"""Latency probes: the address guard first, then the methods, then the runs the routes ask for."""
