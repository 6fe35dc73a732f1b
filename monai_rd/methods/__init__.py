"""Training methods: RD, its ablations and the baselines it is compared against, one registry for ``--method``.

Every method runs through the same recipe, data path, student, optimizer, LR schedule, epochs, checkpoint
selection and seeds; a method decides only what the student learns from, with which loss and trainer, and what is
deployed (:class:`Method`). A new method is a :class:`Method` subclass (or an existing one with other
``params``/``fixed`` options) registered here with :func:`register_method`.
"""

from monai_rd.methods.drd import DRD, DenseDRD
from monai_rd.methods.feature_kd import FEATURE_LOSSES, FeatureKD
from monai_rd.methods.kd import KD, TeacherHeadMethod
from monai_rd.methods.method import (
    METHODS,
    Method,
    MethodSpec,
    create_method,
    deployed_network,
    get_method_spec,
    list_methods,
    register_method,
)
from monai_rd.methods.rd import RD, DenseRD
from monai_rd.methods.teacher_baselines import TeacherBaseline

__all__ = [
    "DRD",
    "DenseDRD",
    "FEATURE_LOSSES",
    "KD",
    "METHODS",
    "DenseRD",
    "FeatureKD",
    "Method",
    "MethodSpec",
    "RD",
    "TeacherBaseline",
    "TeacherHeadMethod",
    "create_method",
    "deployed_network",
    "get_method_spec",
    "list_methods",
    "register_method",
]

_BOTH = ("classification", "segmentation")
for _spec in (
    MethodSpec("student", "the student trained alone (CE), no teacher", {t: Method for t in _BOTH}),
    MethodSpec("rd", "Reprogramming Distillation: Phi + shared head, CE_T, KD and CKA",
               {"classification": RD, "segmentation": DenseRD}),
    MethodSpec("rd_no_cka", "RD without the CKA term (gamma = 0)", {"classification": RD}, fixed={"gamma": 0.0}),
    MethodSpec("rd_no_cotrain", "RD without the teacher-branch CE (alpha = 0)", {"classification": RD},
               fixed={"alpha": 0.0}),
    MethodSpec("rd_direct",
               "direct reprogramming: Phi + head fitted first on the teacher features, frozen, then distilled",
               {"classification": RD}, params={"direct": True}, fixed={"alpha": 0.0}),
    MethodSpec("kd", "Hinton KD from the teacher's linear probe", {"classification": KD}, fixed={"alpha": 0.0}),
    MethodSpec("dkd", "decoupled KD (DKD, Zhao et al. 2022) from the teacher's linear probe", {"classification": KD},
               params={"kd_loss": "dkd"}, fixed={"alpha": 0.0}),
    MethodSpec("dist", "DIST (Huang et al. 2022): correlation of predictions with the teacher's linear probe",
               {"classification": KD}, params={"kd_loss": "dist"}, fixed={"alpha": 0.0, "tau": 1.0}),
    MethodSpec("probe", "the teacher's linear probe (deploys the teacher)", {"classification": TeacherBaseline}),
    MethodSpec("finetune",
               "the teacher fine-tuned end to end with a linear head (LP-FT; deploys the teacher: the ceiling)",
               {"classification": TeacherBaseline}, params={"adapt": "finetune"}, teacher_lr=1e-4),
    MethodSpec("lora", "the teacher adapted with LoRA (peft) and a linear head (deploys the teacher: the PEFT ceiling)",
               {"classification": TeacherBaseline}, params={"adapt": "lora"}, teacher_lr=1e-3),
    MethodSpec("lora_kd", "PEFT + KD: Hinton KD from the LoRA-adapted teacher and its head", {"classification": KD},
               params={"adapt": "lora"}, fixed={"alpha": 0.0}, teacher_lr=1e-3),
    MethodSpec("fitnets", "FitNets hint on a 1x1-projected student map", {"classification": FeatureKD},
               params={"feature_loss": "fitnets"}, feature_weight=100.0),
    MethodSpec("at", "attention transfer", {"classification": FeatureKD}, params={"feature_loss": "at"},
               feature_weight=1000.0),
    MethodSpec("sp", "similarity-preserving KD", {"classification": FeatureKD}, params={"feature_loss": "sp"},
               feature_weight=3000.0),
    MethodSpec("crd", "contrastive representation distillation, in-batch", {"classification": FeatureKD},
               params={"feature_loss": "crd"}, feature_weight=0.8),
    # Deep RD (issue 24): monai_rd.methods.drd
    MethodSpec("drd", "Deep RD: each teacher stage reprogrammed into the student's later stages, KL and CKA per stage",
               {"classification": DRD, "segmentation": DenseDRD}),
    MethodSpec("drd_last", "Deep RD on the last stage only (RD's special case)",
               {"classification": DRD, "segmentation": DenseDRD}, params={"stages": "last"}),
    MethodSpec("drd_no_hybrid", "Deep RD without hybrid paths: the student's CE and each stage's CKA",
               {"classification": DRD, "segmentation": DenseDRD}, params={"hybrid": False},
               fixed={"alpha": 0.0, "beta": 0.0}),
    MethodSpec("drd_no_kl", "Deep RD without the KL terms (beta = 0)",
               {"classification": DRD, "segmentation": DenseDRD}, fixed={"beta": 0.0}),
):
    register_method(_spec)
