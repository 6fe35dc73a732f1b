"""MONAI Label app folder for monai_rd: serves and trains the deployed student of any RD bundle.

    monailabel start_server --app apps/monailabel --studies <images folder> --conf bundle bundles/rd_demo

MONAI Label loads this file and uses the ``MONAILabelApp`` subclass it finds: :class:`monai_rd.label.RDLabelApp`
(the tasks live in the installed package, ``monai_rd.label``). See README.md here.
"""

from monai_rd.label.app import RDLabelApp

__all__ = ["RDLabelApp"]
