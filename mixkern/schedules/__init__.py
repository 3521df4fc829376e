"""Kernel schedules (tile sizes, stages, threads, split-K) and the per-GPU tables that pick them.

Empty until the TileLang kernels land; nothing here is used yet.
"""
