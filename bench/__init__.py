"""
The performance benchmark (not a test): run it with C{bench/run}.
"""
