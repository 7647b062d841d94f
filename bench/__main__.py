"""
C{python -m bench}: see L{bench._run}.
"""

from bench._run import main

if __name__ == "__main__":
    main()
