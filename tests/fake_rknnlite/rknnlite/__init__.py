"""A fake of rknn-toolkit-lite2's ``rknnlite`` package, for tests on hosts without an RK3588 NPU.

Only ``rknnlite.api.RKNNLite`` exists, as in the real package. Tests put the directory
above this one on ``sys.path``; nothing in ``adaptive_sched`` imports it.
"""
