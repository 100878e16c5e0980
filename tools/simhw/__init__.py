"""Simulated board hardware: W5500 emulator, virtual wire, virtual USB."""
