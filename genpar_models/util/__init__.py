"""Small helpers every part of the library shares: whole-or-nothing files and directories
(atomic), the genpar home's layout (paths), every random stream's seed (seeding), thread
limits (threads), a per-process cache of loaded models (cache), verified tensor files
(tensorfile), leaving a process without the interpreter's teardown (leave). None of them
imports torch at import time except threads and tensorfile.
"""
