"""archadapt core: the search space, supernet, posterior, inner loop, derivation and export.

Shared by the meta-trainer and the server; it imports neither of them.
"""

__version__ = "0.1.0"
