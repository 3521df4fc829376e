"""Autotuner for the schedule tables in :mod:`mixkern.schedules`.

Empty until the kernels and schedules exist; there is no ``python -m mixkern.autotune`` yet.
"""
