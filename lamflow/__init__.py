"""lamflow: from DFT data to a fast production potential with DeePMD-kit's DPA models.

The science lives in :mod:`lamflow.steps` (the ``steps/`` folder), the orchestration in
:mod:`lamflow.flows` (the ``flows/`` folder) and the editable inputs in ``templates/``.
"""

__version__ = "0.1.0"
