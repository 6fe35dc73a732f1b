"""Writes a NIfTI-like volume as a DICOM CT series (one file per slice), for tests of reading DICOM series."""

import os

import numpy as np


def write_dicom_series(volume, affine_ras, folder, suffix="", series_uid=None, rescale_intercept=-1024.0):
    """Write ``volume`` (X, Y, Z), in HU, with the NIfTI (RAS) ``affine_ras`` as a CT series: slice k is file k.

    The geometry is DICOM's (LPS): column index = the volume's first axis, row index = its second, slices along the
    third; stored values are ``HU - rescale_intercept`` with that RescaleIntercept, so a reader must apply it.
    Files are written in reverse slice order, so a reader must sort them by position.

    Args:
        volume: (X, Y, Z) array of HU values.
        affine_ras: 4 x 4 voxel-to-RAS affine (nibabel's), without shear.
        folder: the series folder (created).
        suffix: file name ending (``""``: no suffix, as scanners often export).
        series_uid: SeriesInstanceUID (default: a new one).
        rescale_intercept: the RescaleIntercept stored.

    Returns:
        ``folder``.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    # a conformant file (preamble, file meta): pydicom 3 spells it enforce_file_format, 2.4 (the label extra's)
    # write_like_original=False, which pydicom 3 deprecates
    pydicom3 = int(pydicom.__version__.split(".")[0]) >= 3
    conformant = {"enforce_file_format": True} if pydicom3 else {"write_like_original": False}

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=float)
    col_step, row_step, slice_step, origin = lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3]
    series_uid, study, frame = series_uid or generate_uid(), generate_uid(), generate_uid()
    os.makedirs(folder, exist_ok=True)
    nz = volume.shape[2]
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = "CT", series_uid, study, frame
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.PixelSpacing = [float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))]  # between rows, columns
        ds.SliceThickness = float(np.linalg.norm(slice_step))
        ds.ImageOrientationPatient = [*(col_step / np.linalg.norm(col_step)), *(row_step / np.linalg.norm(row_step))]
        ds.ImagePositionPatient = [float(v) for v in origin + k * slice_step]
        ds.InstanceNumber = k + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = rescale_intercept, 1.0
        stored = np.round(np.asarray(volume[:, :, k], dtype=float) - rescale_intercept).astype(np.int16)
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()  # DICOM pixels are (row, column)
        ds.save_as(os.path.join(folder, f"IM{nz - 1 - k:04d}{suffix}"), **conformant)
    return folder
