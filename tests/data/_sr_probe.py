import numpy as np
from braintumor.data.synthetic_volumes import series_datasets, to_bytes, tumour_stack
from braintumor.data.volumes import load_volume_bytes
from braintumor.data.dicom_series import read_dicom_series
from braintumor.inference.volume import SliceResult, VolumeResult, study_finding
from braintumor.inference.dicom_sr import build_report
import traceback
names = ["glioma", "meningioma", "no_tumor", "pituitary"]
for attr in ["PatientBirthDate","PatientSex","StudyID","AccessionNumber","ReferringPhysicianName","StudyTime","SliceThickness","PixelSpacing","PatientName","PatientID","StudyDate","SeriesNumber","InstanceNumber","Manufacturer","FrameOfReferenceUID","SpacingBetweenSlices","StudyInstanceUID","SeriesInstanceUID","SOPInstanceUID", "Modality"]:
    ds = series_datasets(tumour_stack(4, 16))
    for d in ds:
        if attr in d: delattr(d, attr)
    try:
        vol = read_dicom_series([(f"{i}.dcm", to_bytes(d)) for i, d in enumerate(ds)], "s/")
        p = np.tile([0.7,0.1,0.1,0.1], (len(vol.slices),1))
        st = study_finding(p, names, flagged=[False]*len(p), gaps_after=[])
        sl = [SliceResult(i, vol.positions_mm[i], "glioma", dict(zip(names, p[i])), False, 0.1, r.sop_instance_uid if r else None, None) for i, r in enumerate(vol.slice_refs)]
        res = VolumeResult(vol, sl, st, "m", "v", names)
        build_report(res)
        print(attr, "ok", vol.warnings)
    except Exception as e:
        print(attr, "FAIL", type(e).__name__, str(e)[:200])
