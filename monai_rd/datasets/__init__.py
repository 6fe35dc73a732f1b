"""Named public datasets, read from their original downloads into the datalists the bundles train on."""

from monai_rd.datasets.btc import BTC_CLASSES, BTC_SPEC, btc_datalist
from monai_rd.datasets.busi import BUSI_CLASSES, BUSI_SPEC, busi_datalist
from monai_rd.datasets.chestxray14 import CHESTXRAY14_FINDINGS, CHESTXRAY14_SPEC, chestxray14_datalist
from monai_rd.datasets.covid_ct import COVID_CT_CLASSES, COVID_CT_SPEC, covid_ct_datalist
from monai_rd.datasets.decathlon import decathlon_datalist
from monai_rd.datasets.isic2018 import ISIC2018_CLASSES, ISIC2018_SPEC, isic2018_datalist
from monai_rd.datasets.spec import DatasetSpec

__all__ = [
    "BTC_CLASSES",
    "BTC_SPEC",
    "BUSI_CLASSES",
    "BUSI_SPEC",
    "CHESTXRAY14_FINDINGS",
    "CHESTXRAY14_SPEC",
    "COVID_CT_CLASSES",
    "COVID_CT_SPEC",
    "DatasetSpec",
    "ISIC2018_CLASSES",
    "ISIC2018_SPEC",
    "btc_datalist",
    "busi_datalist",
    "chestxray14_datalist",
    "covid_ct_datalist",
    "decathlon_datalist",
    "isic2018_datalist",
]
