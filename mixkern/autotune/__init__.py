"""Autotuner for the schedule tables in :mod:`mixkern.schedules`.

    python -m mixkern.autotune --gpu h100 --model llama3-8b
    python -m mixkern.autotune --gpu a100 --compile-only --shapes 4096x4096

:mod:`.space` enumerates and prunes each M bucket's schedules; :mod:`.tuner` compiles them
in parallel, checks each bit-exact against the reference, times it, and writes the table.
"""
