"""landscape: loss-landscape geometry of neural networks, measured while they train.

One module per concept; see ``docs/`` and README.md. Stages in ``stages/`` call into this package.
"""

__version__ = "0.1.0"
